/**
 * `/v1/cni/*`: what the CNI plugin (`cilia-cni`) asks of the agent: `add`, `del`, `check` and
 * `gc` (bodies in cni/types.ts). The plugin itself answers VERSION, and STATUS with
 * `/v1/healthz`. Every answer is JSON; errors use the API's error shape, whose code the plugin
 * turns into a CNI error code. Every answer carries `Server-Timing: agent;dur=<ms>` (the time
 * spent in the agent: body, validation and the work), which `bench cni` reports.
 */

import type { Hono } from "hono";
import type { Agent } from "../agent.ts";
import {
  CniAddRequestSchema,
  CniCheckRequestSchema,
  CniDelRequestSchema,
  CniGcRequestSchema,
} from "../cni/types.ts";
import { jsonBody } from "./_params.ts";

export function registerCniRoutes(app: Hono, agent: Agent): void {
  app.use("/v1/cni/*", async (c, next) => {
    const started = performance.now();
    await next();
    c.res.headers.set("server-timing", `agent;dur=${(performance.now() - started).toFixed(2)}`);
  });

  app.post("/v1/cni/add", async (c) => {
    const req = await jsonBody(c, CniAddRequestSchema, "CNI ADD request");
    return c.json(await agent.cni.add(req));
  });

  app.post("/v1/cni/del", async (c) => {
    const req = await jsonBody(c, CniDelRequestSchema, "CNI DEL request");
    return c.json(await agent.cni.del(req));
  });

  app.post("/v1/cni/check", async (c) => {
    const req = await jsonBody(c, CniCheckRequestSchema, "CNI CHECK request");
    return c.json(await agent.cni.check(req));
  });

  app.post("/v1/cni/gc", async (c) => {
    const req = await jsonBody(c, CniGcRequestSchema, "CNI GC request");
    return c.json(await agent.cni.gc(req));
  });
}
