/**
 * `/v1/endpoint`: list, get (by id, `namespace/name` or name), put (create or replace by id),
 * patch labels, delete. Bodies are validated before anything is allocated or stored.
 */

import type { Hono } from "hono";
import { z } from "zod";
import type { Agent } from "../agent.ts";
import { type EndpointRecord, EndpointSpecSchema, Labels } from "../endpoint/spec.ts";
import { EndpointNotFoundError } from "../endpoint/manager.ts";
import { endpointId, jsonBody } from "./_params.ts";
import { policyModes } from "../status.ts";

const LabelPatch = z.strictObject({
  add: Labels.optional(),
  remove: z.array(z.string()).optional(),
}).refine((p) => p.add !== undefined || p.remove !== undefined, {
  message: `Expected "add" and/or "remove"`,
});

function view(agent: Agent, ep: EndpointRecord) {
  const r = agent.regen.resolved(ep.id);
  return {
    ...ep,
    policyRevision: r?.revision ?? 0,
    // Per direction: enforcing (default-deny), auditing (audit-mode policies report), both, none.
    ...(r ? { policyMode: policyModes(r) } : {}),
    state: r?.error === undefined ? "ready" : "not-ready",
    ...(r?.error !== undefined ? { error: r.error } : {}),
  };
}

export function registerEndpointRoutes(app: Hono, agent: Agent): void {
  app.get("/v1/endpoint", (c) => c.json(agent.endpoints.list().map((e) => view(agent, e))));

  app.get("/v1/endpoint/:ref{.+}", (c) => {
    // Hono has decoded the parameter already; decoding twice turns "100%25" into a URIError.
    const ref = c.req.param("ref");
    const ep = agent.endpoints.find(ref);
    if (ep === undefined) {
      throw new EndpointNotFoundError(`Endpoint "${ref}" does not exist on this node`);
    }
    return c.json(view(agent, ep));
  });

  app.put("/v1/endpoint/:id", async (c) => {
    const id = endpointId(c.req.param("id"));
    const spec = await jsonBody(c, EndpointSpecSchema, "endpoint");
    const { endpoint, created } = await agent.endpoints.put(id, spec);
    return c.json(view(agent, endpoint), created ? 201 : 200);
  });

  app.patch("/v1/endpoint/:id/labels", async (c) => {
    const id = endpointId(c.req.param("id"));
    const patch = await jsonBody(c, LabelPatch, "label change");
    agent.endpoints.get(id);
    const ep = await agent.endpoints.patchLabels(id, {
      ...(patch.add ? { add: patch.add } : {}),
      ...(patch.remove ? { remove: patch.remove } : {}),
    });
    return c.json(view(agent, ep));
  });

  app.delete("/v1/endpoint/:id", async (c) => {
    const id = endpointId(c.req.param("id"));
    return c.json(view(agent, await agent.endpoints.delete(id)));
  });
}
