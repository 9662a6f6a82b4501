/**
 * `/v1/policy`: PUT imports YAML or JSON (a raw document stream, `?file=` naming it in
 * messages; or `{"sources": [{"text", "file"?}]}` to import several files at once), GET returns
 * (200, or 202 when it is stored but not yet in force on every endpoint), GET returns
 * the documents in force as YAML that imports again unchanged (JSON with `Accept:
 * application/json`), DELETE removes by `kind`/`namespace`/`name`, by `labels=k=v,…` or `all`.
 * `/v1/policy/resolved/{endpoint}` is the map-state in force; `POST /v1/policy/trace` judges one
 * flow on live endpoints.
 */

import type { Context, Hono } from "hono";
import { z } from "zod";
import type { PolicySource } from "@cilia/policy-wasm";
import type { Agent } from "../agent.ts";
import type { PolicyFilter } from "../policy/documents.ts";
import { refOf } from "../policy/documents.ts";
import { EndpointNotFoundError } from "../endpoint/manager.ts";
import { traceFlow, TraceRequestSchema } from "../policy/trace.ts";
import { ApiError, validate } from "./errors.ts";
import { bodyText, jsonBody, labelList } from "./_params.ts";

const Sources = z.strictObject({
  sources: z.array(z.strictObject({
    text: z.string(),
    file: z.string().max(4096).optional(),
  })).min(1),
});

const Filter = z.strictObject({
  kind: z.enum(["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy"])
    .optional(),
  namespace: z.string().min(1).optional(),
  name: z.string().min(1).optional(),
  labels: z.string().min(1).optional(),
  all: z.enum(["true", "false"]).optional(),
});

function filterOf(c: Context): PolicyFilter & { all: boolean } {
  const q = validate(Filter, c.req.query(), "policy filter");
  return {
    ...(q.kind ? { kind: q.kind } : {}),
    ...(q.namespace ? { namespace: q.namespace } : {}),
    ...(q.name ? { name: q.name } : {}),
    ...(q.labels ? { labels: labelList(q.labels, "labels") } : {}),
    all: q.all === "true",
  };
}

async function importSources(c: Context): Promise<PolicySource[]> {
  const type = c.req.header("content-type") ?? "";
  const file = c.req.query("file");
  const text = await bodyText(c);
  if (type.includes("json") && /^\s*\{\s*"sources"\s*:/.test(text)) {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new ApiError(400, "invalid_json", `Invalid policy import: ${(err as Error).message}`);
    }
    return validate(Sources, value, "policy import").sources.map((s) => ({
      text: s.text,
      ...(s.file !== undefined ? { file: s.file } : {}),
    }));
  }
  if (text.trim() === "") {
    throw new ApiError(400, "invalid_request", "Missing policy: the body is empty", {
      hint: "send YAML or JSON policy documents",
    });
  }
  return [{ text, ...(file ? { file } : {}) }];
}

export function registerPolicyRoutes(app: Hono, agent: Agent): void {
  app.get("/v1/policy", (c) => {
    const { all: _all, ...filter } = filterOf(c);
    const revision = String(agent.policies.revision);
    if ((c.req.header("accept") ?? "").includes("application/json")) {
      return c.json({
        revision: agent.policies.revision,
        policies: agent.policies.list(filter).map((d) => ({ ...refOf(d), text: d.text })),
      });
    }
    return c.body(agent.policies.yaml(filter), 200, {
      "content-type": "application/yaml; charset=utf-8",
      "x-cilia-policy-revision": revision,
    });
  });

  // 202: stored, but not in force on every endpoint yet (`realised: false`, `unrealised`).
  app.put("/v1/policy", async (c) => {
    const result = await agent.policies.import(await importSources(c));
    return c.json(result, result.realised ? 200 : 202);
  });

  app.delete("/v1/policy", async (c) => {
    const { all, ...filter } = filterOf(c);
    if (!all && filter.name === undefined && filter.labels === undefined) {
      throw new ApiError(400, "invalid_request", "Missing policy selection", {
        hint: "give name= (with kind= and namespace= to narrow it), labels=k=v,… or all=true",
      });
    }
    const result = await agent.policies.delete(all ? {} : filter);
    return c.json(result, result.realised ? 200 : 202);
  });

  app.get("/v1/policy/resolved/:ref{.+}", (c) => {
    // Hono has decoded the parameter already; decoding twice turns "100%25" into a URIError.
    const ref = c.req.param("ref");
    const ep = agent.endpoints.find(ref);
    const resolved = ep && agent.regen.resolved(ep.id);
    if (!ep || !resolved) {
      throw new EndpointNotFoundError(`Endpoint "${ref}" does not exist on this node`);
    }
    return c.json({ ...resolved, name: ep.name, namespace: ep.namespace });
  });

  app.post("/v1/policy/trace", async (c) => {
    const req = await jsonBody(c, TraceRequestSchema, "trace request");
    const result = await agent.serial.run(() =>
      traceFlow(agent.engine, agent.endpoints.list(), req)
    );
    return c.json(result);
  });
}
