/**
 * `/v1/fqdn/cache`: what the DNS proxy learned for toFQDNs, per endpoint (`GET`, filters
 * `endpoint` = NS/NAME or id, `name` = exact, case-insensitive), and `DELETE` to forget records
 * (all, or of one name): their addresses lose their FQDN identities through the regenerator.
 */

import type { Hono } from "hono";
import type { Agent } from "../agent.ts";
import { EndpointNotFoundError } from "../endpoint/manager.ts";

function filterOf(agent: Agent, q: { endpoint: string | undefined; name: string | undefined }) {
  let endpoint: number | undefined;
  if (q.endpoint) {
    const ep = agent.endpoints.find(q.endpoint);
    if (!ep) {
      throw new EndpointNotFoundError(`Endpoint "${q.endpoint}" does not exist on this node`);
    }
    endpoint = ep.id;
  }
  return {
    ...(endpoint !== undefined ? { endpoint } : {}),
    ...(q.name ? { name: q.name } : {}),
  };
}

export function registerFqdnRoutes(app: Hono, agent: Agent): void {
  app.get("/v1/fqdn/cache", (c) => {
    const f = filterOf(agent, { endpoint: c.req.query("endpoint"), name: c.req.query("name") });
    return c.json({
      entries: agent.fqdn.list(f).map((e) => ({
        ...e,
        identity: agent.fqdn.identities.identityOf(e.ip) ?? null,
      })),
    });
  });
  app.delete("/v1/fqdn/cache", async (c) => {
    const f = filterOf(agent, { endpoint: c.req.query("endpoint"), name: c.req.query("name") });
    return c.json({ removed: await agent.fqdn.clean(f) });
  });
}
