/**
 * `/v1/service`: ClusterIP services (flow 8). List, get by id, upsert (PUT: a frontend that
 * exists is replaced, 201 when new), delete; `POST /v1/service/import` takes Kubernetes Service
 * and EndpointSlice YAML. Handlers validate and hand over to the ServiceManager; they write
 * nothing themselves.
 */

import type { Hono } from "hono";
import type { Agent } from "../agent.ts";
import { ApiError, validate } from "./errors.ts";
import { bodyText, jsonBody } from "./_params.ts";
import { ServiceError, type ServiceManager } from "../service/manager.ts";
import { ServiceInputSchema } from "../service/spec.ts";
import { importKubernetesServices } from "../service/k8s_import.ts";

function serviceId(text: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) {
    throw new ApiError(400, "invalid_request", `Invalid service id "${text}": expected 1-65535`);
  }
  return Number(text);
}

async function guarded<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ServiceError) {
      throw new ApiError(
        err.code === "not_found" ? 404 : 400,
        err.code === "not_found" ? "service_not_found" : "invalid_request",
        err.message,
      );
    }
    throw err;
  }
}

export function registerServiceRoutes(app: Hono, agent: Agent): void {
  const services = (): ServiceManager => {
    if (!agent.services) throw new ApiError(503, "not_ready", "Services are not available yet");
    return agent.services;
  };

  app.get("/v1/service", (c) => c.json(services().list()));

  app.get("/v1/service/:id", (c) => {
    const id = serviceId(c.req.param("id"));
    const s = services().get(id);
    if (!s) throw new ApiError(404, "service_not_found", `Service ${id} does not exist`);
    return c.json(s);
  });

  app.put("/v1/service", async (c) => {
    const body = await jsonBody(c, ServiceInputSchema, "service");
    const r = await guarded(() => services().upsert(body));
    return c.json(r.service, r.created ? 201 : 200);
  });

  app.delete("/v1/service/:id", async (c) => {
    const id = serviceId(c.req.param("id"));
    return c.json(await guarded(() => services().delete(id)));
  });

  app.post("/v1/service/import", async (c) => {
    const text = await bodyText(c);
    const inputs = await guarded(() => Promise.resolve(importKubernetesServices(text)));
    // Every document is checked before anything is stored.
    inputs.forEach((s, i) => validate(ServiceInputSchema, s, `service ${i + 1}`));
    const out = [];
    for (const s of inputs) out.push((await guarded(() => services().upsert(s))).service);
    return c.json(out);
  });
}
