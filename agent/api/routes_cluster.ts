/**
 * `/v1/identity` (list, get: reserved, global and node-local identities) and `/v1/ipam` (list,
 * allocate, release addresses of this node's pod CIDRs).
 */

import type { Hono } from "hono";
import { z } from "zod";
import type { Agent } from "../agent.ts";
import { ApiError } from "./errors.ts";
import { jsonBody } from "./_params.ts";

const Allocate = z.strictObject({
  family: z.union([z.literal(4), z.literal(6), z.literal("4"), z.literal("6")])
    .transform((f) => Number(f) as 4 | 6).optional(),
  owner: z.string().min(1).max(256),
});

export function registerClusterRoutes(app: Hono, agent: Agent): void {
  app.get("/v1/identity", (c) => c.json(agent.identityList()));

  app.get("/v1/identity/:id", (c) => {
    const text = c.req.param("id");
    if (!/^\d{1,10}$/.test(text)) {
      throw new ApiError(400, "invalid_request", `Invalid identity "${text}": expected a number`);
    }
    const identity = agent.identityList().find((i) => i.id === Number(text));
    if (identity === undefined) {
      throw new ApiError(404, "identity_not_found", `Identity ${text} is not known to this agent`);
    }
    return c.json(identity);
  });

  app.get("/v1/ipam", (c) => c.json({ pools: agent.ipam.pools(), allocations: agent.ipam.list() }));

  app.post("/v1/ipam", async (c) => {
    const body = await jsonBody(c, Allocate, "allocation request");
    const a = await agent.ipam.allocate({
      owner: body.owner,
      ...(body.family !== undefined ? { family: body.family } : {}),
    });
    const pool = agent.ipam.pools().find((p) => p.family === a.family)!;
    return c.json({ ...a, gateway: pool.gateway }, 201);
  });

  app.delete("/v1/ipam/:ip", async (c) => {
    // Hono has decoded the parameter already; decoding twice turns "100%25" into a URIError.
    const ip = c.req.param("ip");
    return c.json(await agent.ipam.release(ip));
  });
}
