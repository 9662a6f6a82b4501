/**
 * The agent's HTTP API as a Hono app: `createApi(agent)` registers every `/v1` route, a body
 * size limit (413), request counting for metrics, and one `onError` that turns whatever a
 * handler threw into `{error: {code, message, details?, hint?}}`. Usable in-process with
 * `app.request()`; `server.ts` serves it on the unix socket.
 */

import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { Agent } from "../agent.ts";
import { type ErrorBody, toErrorBody } from "./errors.ts";
import { registerStatusRoutes } from "./routes_status.ts";
import { registerEndpointRoutes } from "./routes_endpoint.ts";
import { registerPolicyRoutes } from "./routes_policy.ts";
import { registerClusterRoutes } from "./routes_cluster.ts";
import { registerCniRoutes } from "./routes_cni.ts";
import { registerFlowRoutes } from "./routes_flows.ts";
import { registerBpfRoutes } from "./routes_bpf.ts";
import { registerFqdnRoutes } from "./routes_fqdn.ts";
import { registerServiceRoutes } from "./routes_service.ts";
import { registerDebugRoutes } from "./routes_debug.ts";

export function createApi(agent: Agent): Hono {
  const app = new Hono();
  const log = agent.log.child({ subsys: "api" });

  app.use("*", async (c, next) => {
    await next();
    const route = c.req.routePath && c.req.routePath !== "/*" ? c.req.routePath : "unmatched";
    agent.counters.apiRequests.inc({ path: route, code: c.res.status });
    log.debug("request", { method: c.req.method, path: c.req.path, status: c.res.status });
  });

  app.use(
    "*",
    bodyLimit({
      maxSize: agent.config.apiBodyLimit,
      onError: (c) => {
        const body: ErrorBody = {
          error: {
            code: "body_too_large",
            message: `Request body too large: the limit is ${agent.config.apiBodyLimit} bytes`,
            hint: "split the request (for policies: import fewer documents at a time)",
          },
        };
        return c.json(body, 413);
      },
    }),
  );

  registerStatusRoutes(app, agent);
  registerEndpointRoutes(app, agent);
  registerPolicyRoutes(app, agent);
  registerClusterRoutes(app, agent);
  registerCniRoutes(app, agent);
  registerFlowRoutes(app, agent);
  registerBpfRoutes(app, agent);
  registerFqdnRoutes(app, agent);
  registerServiceRoutes(app, agent);
  registerDebugRoutes(app, agent);

  app.notFound((c) => {
    const body: ErrorBody = {
      error: {
        code: "not_found",
        message: `No API route for ${c.req.method} ${c.req.path}`,
        hint: "the API lives under /v1: /v1/status, /v1/endpoint, /v1/identity, /v1/policy, …",
      },
    };
    return c.json(body, 404);
  });

  app.onError((err, c) => {
    const { status, body } = toErrorBody(err, agent.store.name);
    if (status >= 500) {
      log.error("request failed", { method: c.req.method, path: c.req.path, error: err });
    }
    return c.json(body, status as ContentfulStatusCode);
  });
  return app;
}
