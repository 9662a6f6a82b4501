// Fuzzing the agent's API in process (tests/agent/_fixture.ts): every registered route, and some
// that are not, with random and mutated JSON bodies, text and binary bodies, wrong content types,
// an oversized body, and path parameters and queries made of `..`, percent-escapes (malformed
// ones too), unicode, huge and negative numbers. Properties: no 5xx; every non-2xx answer is JSON
// `{error: {code, message}}` with both non-empty; after a rejected request the kvstore (every
// key and value) and the agent's views (endpoints, identities, policies) are exactly as before;
// and at the end the agent is healthy.

import { POLICY_HTTP, startAgent, type TestAgent } from "../agent/_fixture.ts";
import { Findings, fuzzSeed, iterations, Rand } from "./_rand.ts";
import { type Json, mutateValue, STRANGE_STRINGS, strangeValue } from "./_mutate_values.ts";

const VALID_BODIES: Record<string, Json[]> = {
  "PUT /v1/endpoint/:id": [
    { name: "web-2", namespace: "default", labels: { app: "web", tier: "1" } },
    {
      name: "db",
      labels: { "k8s:app": "db" },
      namedPorts: [{ name: "sql", port: 5432 }],
      ipv4: "10.200.0.77",
    },
  ],
  "PATCH /v1/endpoint/:id/labels": [{ add: { env: "prod" } }, { remove: ["tier"] }],
  "PUT /v1/policy": [{ sources: [{ text: POLICY_HTTP, file: "http.yaml" }] }],
  "POST /v1/policy/trace": [
    { from: "default/client", to: "default/server", port: 80, http: { method: "GET", path: "/" } },
    { from: { ip: "10.0.0.1" }, to: { entity: "world" }, port: 53, protocol: "UDP" },
  ],
  "POST /v1/ipam": [{ owner: "fuzz", family: 4 }],
  "POST /v1/cni/add": [{
    containerId: "c1",
    netns: "/run/netns/x",
    ifname: "eth0",
    network: "n",
    labels: { app: "x" },
  }],
  "POST /v1/cni/del": [{ containerId: "c1", ifname: "eth0", network: "n" }],
  "POST /v1/cni/check": [{ containerId: "c1", ifname: "eth0", network: "n", netns: "/x" }],
  "POST /v1/cni/gc": [{ network: "n", validAttachments: [{ containerId: "c1", ifname: "eth0" }] }],
};

const PARAMS = [
  "1",
  "2",
  "0",
  "-1",
  "65535",
  "65536",
  "4294967296",
  "99999999999999999999999",
  "1e3",
  "0x10",
  "%201",
  "01",
  "1.0",
  "..",
  "%2e%2e",
  "..%2F..%2Fetc%2Fpasswd",
  "../../etc/passwd",
  "%",
  "100%25",
  "%ZZ",
  "%E0%A4%A",
  "%00",
  "%C0%AF",
  "%F0%9F%98%80",
  "日本",
  "default%2Fclient",
  "default/client",
  "client",
  "10.200.0.5",
  "fd00%3A%3A1",
  "a".repeat(10_000),
  "%u0041",
  "__proto__",
  "constructor",
];

const CONTENT_TYPES = [
  "application/json",
  "application/json; charset=utf-8",
  "application/json; charset=utf-16",
  "text/plain",
  "application/yaml",
  "multipart/form-data; boundary=x",
  "application/x-www-form-urlencoded",
  "",
  "application/octet-stream",
];

/**
 * 503s the API documents (agent/api/errors.ts, the CNI routes): the agent cannot serve the
 * request in its current configuration, which is not the client's fault. Everything else ≥ 500
 * is a bug.
 */
const UNAVAILABLE =
  /"code":"(cni_unavailable|ipam_exhausted|identity_exhausted|kvstore_unavailable|unhealthy|no_datapath)"/;

function pathFor(r: Rand, template: string): string {
  return template.replace(/:(\w+)(\{[^}]*\})?/g, () => r.pick(PARAMS));
}

/** Every byte percent-encoded (encodeURIComponent throws on a lone surrogate). */
const escape = (s: string) =>
  [...new TextEncoder().encode(s)].map((b) => "%" + b.toString(16).padStart(2, "0")).join("");

function query(r: Rand): string {
  if (r.chance(0.5)) return "";
  const keys = ["kind", "namespace", "name", "labels", "all", "file", "x", "__proto__", "labels"];
  const parts = Array.from(
    { length: r.range(1, 4) },
    () =>
      `${r.pick(keys)}=${
        escape(r.chance(0.5) ? r.pick(STRANGE_STRINGS) : JSON.stringify(strangeValue(r)))
      }`.slice(0, 300),
  );
  if (r.chance(0.1)) parts.push("%ZZ=%E0%A4%A", "all=true&all=false");
  return "?" + parts.join("&");
}

function bodyFor(
  r: Rand,
  key: string,
  limit: number,
): { body?: BodyInit; type: string; desc: string } {
  const type = r.chance(0.7) ? "application/json" : r.pick(CONTENT_TYPES);
  const k = r.int(20);
  if (k === 0) return { type, desc: "no body" };
  if (k === 1) return { body: "", type, desc: "empty body" };
  if (k === 2) {
    const bytes = new Uint8Array(r.int(300)).map(() => r.int(256));
    return { body: bytes, type, desc: `${bytes.length} random bytes` };
  }
  if (k === 3) return { body: "{".repeat(r.range(1, 3000)), type, desc: "unbalanced braces" };
  if (k === 4) return { body: "[".repeat(5000) + "]".repeat(5000), type, desc: "deep JSON" };
  if (k === 5) return { body: r.pick(STRANGE_STRINGS), type, desc: "a strange string" };
  if (k === 6 && r.chance(0.2)) {
    const body = JSON.stringify({ sources: [{ text: "x".repeat(limit + 10) }] });
    return { body, type, desc: `a body over the limit (${body.length} bytes)` };
  }
  if (k === 7) {
    return { body: "apiVersion: cilium.io/v2\nkind: toString\n", type, desc: "kind toString" };
  }
  const valid = VALID_BODIES[key];
  let value: Json = valid && r.chance(0.85) ? structuredClone(r.pick(valid)) : strangeValue(r);
  const how: string[] = [];
  for (let n = r.int(3); n > 0; n--) {
    const [v, d] = mutateValue(r, value);
    value = v;
    how.push(d);
  }
  return { body: JSON.stringify(value) ?? "null", type, desc: how.join("; ") || "valid body" };
}

async function snapshot(a: TestAgent): Promise<string> {
  const store = (await a.agent.store.list("")).map((e) =>
    `${e.key}=${new TextDecoder().decode(e.value)}`
  );
  const views = await Promise.all(
    ["/v1/endpoint", "/v1/identity", "/v1/policy", "/v1/ipam"].map(async (p) =>
      `${p}: ${JSON.stringify((await a.call("GET", p)).body)}`
    ),
  );
  return [...store, ...views].join("\n");
}

function firstDifference(a: string, b: string): string {
  const la = a.split("\n"), lb = b.split("\n");
  const i = la.findIndex((l, k) => l !== lb[k]);
  const at = i < 0 ? la.length : i;
  return `${(la[at] ?? "(nothing)").slice(0, 200)} became ${(lb[at] ?? "(nothing)").slice(0, 200)}`;
}

Deno.test("agent API: malformed requests on every route are 4xx with the error shape and change nothing", async () => {
  const seed = fuzzSeed(0xa9e47);
  const r = new Rand(seed);
  const found = new Findings();
  const a = await startAgent();
  try {
    for (
      const [id, name, labels] of [[1, "client", { app: "client" }], [2, "server", {
        app: "server",
      }]] as const
    ) {
      const res = await a.call("PUT", `/v1/endpoint/${id}`, { name, labels });
      if (res.status !== 201) {
        throw new Error(`Cannot create endpoint ${name}: ${JSON.stringify(res.body)}`);
      }
    }
    const imported = await a.call("PUT", "/v1/policy?file=http.yaml", POLICY_HTTP, {
      "content-type": "application/yaml",
    });
    if (imported.status !== 200) {
      throw new Error(`Cannot import the policy: ${JSON.stringify(imported.body)}`);
    }

    const routes = [
      ...new Set(
        a.app.routes.filter((rt) => rt.method !== "ALL").map((rt) => `${rt.method} ${rt.path}`),
      ),
    ];
    routes.push(
      "GET /v1/nothing",
      "POST /v1/endpoint",
      "PUT /v1/endpoint/1/labels",
      "DELETE /v1/identity/1",
      "GET /v1//endpoint",
      "GET /",
      "OPTIONS /v1/policy",
      "GET /v1/endpoint/",
    );
    if (routes.length < 20) throw new Error(`Only ${routes.length} routes registered: ${routes}`);
    const limit = a.agent.config.apiBodyLimit;
    let state = await snapshot(a);
    const statuses = new Map<number, number>();
    for (let i = 0; i < iterations(1_500); i++) {
      const route = r.pick(routes);
      const [method, template] = route.split(" ") as [string, string];
      const path = pathFor(r, template) +
        (template.startsWith("/v1/policy") ? query(r) : r.chance(0.1) ? query(r) : "");
      // The Fetch API refuses a GET or HEAD with a body, so app.request() cannot send one.
      const { body, type, desc } = method === "GET" || method === "HEAD" ||
          (method === "DELETE" && r.chance(0.8))
        ? { body: undefined, type: "", desc: "no body" }
        : bodyFor(r, route, limit);
      const what = `#${i} ${method} ${path.slice(0, 160)} [${type || "no type"}] (${
        desc.slice(0, 160)
      })`;
      let res: Response;
      try {
        res = await a.app.request(path, {
          method,
          ...(type ? { headers: { "content-type": type } } : {}),
          ...(body !== undefined ? { body } : {}),
        });
      } catch (err) {
        found.add(`${what}: the app threw ${(err as Error)?.stack ?? err}`);
        continue;
      }
      // A successful stream (`/v1/events`, `/v1/flows?follow=true`) runs until the client
      // leaves: its status and content type are the answer; the body is not waited for.
      const streaming = res.status < 300 &&
        (res.headers.get("content-type") ?? "").includes("ndjson") &&
        (template === "/v1/events" || /[?&]follow=true/.test(path));
      if (streaming) await res.body?.cancel();
      const text = streaming ? "" : await res.text();
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      if (res.status >= 500 && !(res.status === 503 && UNAVAILABLE.test(text))) {
        found.add(`${what}: ${res.status} ${text.slice(0, 300)}`);
      }
      if (res.status >= 300) {
        let shape: Json;
        try {
          shape = JSON.parse(text);
        } catch {
          shape = undefined;
        }
        const e = shape?.error;
        if (
          !(typeof e?.code === "string" && e.code !== "" && typeof e?.message === "string" &&
            e.message !== "")
        ) {
          found.add(`${what}: ${res.status} without the error shape: ${text.slice(0, 200)}`);
        }
      }
      const after = await snapshot(a);
      if (res.status >= 300 && after !== state) {
        found.add(`${what}: rejected with ${res.status} but ${firstDifference(state, after)}`);
      }
      state = after;
    }
    const health = await a.call("GET", "/v1/healthz");
    if (health.status !== 200) {
      found.add(`the agent is not healthy at the end: ${JSON.stringify(health.body)}`);
    }
    if (Deno.env.get("CILIA_FUZZ_VERBOSE")) console.log(JSON.stringify([...statuses].sort()));
    found.assertNone("Agent API", seed);
    const rejected = [...statuses].filter(([s]) => s >= 400).reduce((n, [, c]) => n + c, 0);
    if (rejected < iterations(1_500) / 2) {
      throw new Error(`Only ${rejected} requests were rejected: ${JSON.stringify([...statuses])}`);
    }
  } finally {
    await a.close();
  }
});
