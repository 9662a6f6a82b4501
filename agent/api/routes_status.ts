/**
 * `/v1/healthz`, `/v1/status`, `/v1/config`, `/v1/node` and `/v1/metrics` (Prometheus text, as
 * on `--metrics-addr`): how the agent is, how it is configured, and which nodes the kvstore
 * knows (and whether they answer probes). Read-only.
 */

import type { Hono } from "hono";
import type { Agent } from "../agent.ts";
import { ApiError } from "./errors.ts";

export function registerStatusRoutes(app: Hono, agent: Agent): void {
  app.get("/v1/healthz", async (c) => {
    const s = await agent.status();
    if (!s.healthy) {
      throw new ApiError(503, "unhealthy", `Agent is unhealthy: ${s.warnings.join("; ")}`);
    }
    return c.json({ status: "ok", node: s.node.name, uptimeSeconds: s.uptimeSeconds });
  });

  app.get("/v1/status", async (c) => c.json(await agent.status()));

  app.get("/v1/config", (c) => {
    const { config } = agent;
    return c.json({
      ...config,
      ipam: agent.ipam.pools().map(({ family, cidr, gateway }) => ({ family, cidr, gateway })),
    });
  });

  /** Node records with each other node's reachability (node/health.ts), when probed. */
  const nodes = async () =>
    agent.discovery.describe(await agent.nodes.list()).map((n) => {
      const r = n.health === "self" ? undefined : agent.nodeHealth?.of(n.name);
      return r ? { ...n, reachability: r } : n;
    });

  app.get("/v1/node", async (c) => c.json(await nodes()));

  app.get("/v1/metrics", async (c) =>
    c.body(await agent.metrics.scrape(), 200, {
      "content-type": "text/plain; version=0.0.4; charset=utf-8",
    }));

  app.get("/v1/node/:name", async (c) => {
    const name = c.req.param("name");
    const node = (await nodes()).find((n) => n.name === name);
    if (node === undefined) {
      throw new ApiError(404, "node_not_found", `Node "${name}" is not in the kvstore`);
    }
    return c.json(node);
  });
}
