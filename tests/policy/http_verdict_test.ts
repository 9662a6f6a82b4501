// PolicyEngine.judgeHttp(), the L7 proxy's per-request path (no explanation, written and read in
// place), against query(): same verdict, cookie and L7 outcome on seeded random requests (dot
// segments, escapes, backslashes, query strings, non-ASCII, headers), and the engine's path
// normalisation (with its fast path for paths already normal) against a port of its slow path.

import assert from "node:assert/strict";
import { compilePolicies, PolicyEngine, SimCluster } from "../../policy-wasm/mod.ts";
import { prng } from "../helpers/prng.ts";

const POLICY = (paths: string) =>
  `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
${paths}
    - fromEndpoints: [{matchLabels: {app: other}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`;

const RULES = `              - {method: GET, path: "/public/.*"}
              - {method: "POST|PUT", path: "/api/v[0-9]+/.*", headers: ["X-Token: [a-z]+"]}
              - {path: "/a/b(\\\\?.*)?", host: "svc\\\\..*"}
              - {method: GET, path: "/é/.*"}
              - {path: "/env/.*", headerMatches: [{name: X-Env, value: prod}]}`;

async function setup(rules: string) {
  const engine = await PolicyEngine.create();
  const cluster = new SimCluster({
    endpoints: ["client", "server", "other", "stranger"].map((app) => ({
      name: app,
      labels: { app },
    })),
  });
  const load = (r: string) =>
    cluster.load(engine, compilePolicies({ text: POLICY(r) }).spec, engine.options);
  load(rules);
  const ep = (n: string) => cluster.endpoint(n)!;
  return { engine, load, server: ep("server"), peers: ["client", "other", "stranger"].map(ep) };
}

function pick<T>(rnd: () => number, items: readonly T[]): T {
  return items[Math.floor(rnd() * items.length)]!;
}

const SEGMENTS = ["a", "b", "public", "api", "v2", "env", "é", ".", "..", "", "%2e", "%2E%2e"];
const MORE = ["%2F", "%2f", "%41", "%zz", "%7e", "x.y", ".a", "..b", "\\", "a\\b", "%5C", "%"];

function genPath(rnd: () => number): string {
  const n = Math.floor(rnd() * 5);
  let p = rnd() < 0.9
    ? pick(rnd, ["/", "/public/", "/api/v2/", "/env/", "/a/b", "/é/"])
    : pick(rnd, ["", "%2F", "a", "\\"]);
  for (let i = 0; i < n; i++) {
    p += pick(rnd, rnd() < 0.7 ? SEGMENTS : MORE) + (i < n - 1 || rnd() < 0.3 ? "/" : "");
  }
  if (rnd() < 0.25) p += "?" + pick(rnd, ["x=1", "a/../b", "%2e", ""]);
  return p;
}

Deno.test("judgeHttp() gives query()'s verdict, cookie and L7 outcome", async () => {
  const { engine, server, peers } = await setup(RULES);
  const rnd = prng(0x1a7);
  const seen = new Set<string>();
  for (let i = 0; i < 3000; i++) {
    const headers: Record<string, string> = {};
    if (rnd() < 0.7) headers["X-Token"] = pick(rnd, ["abc", "abc", "ABC", "", "é"]);
    if (rnd() < 0.5) headers[pick(rnd, ["x-env", "X-Env"])] = pick(rnd, ["prod", "dev"]);
    if (rnd() < 0.3) headers["user-agent"] = "x".repeat(Math.floor(rnd() * 100));
    const q = {
      endpoint: server.id,
      direction: "ingress" as const,
      peer: pick(rnd, [peers[0]!, ...peers]).identity,
      proto: 6,
      port: pick(rnd, [80, 80, 80, 81]),
      http: {
        method: pick(rnd, ["GET", "POST", "PUT", "get", "DELETE"]),
        path: genPath(rnd),
        ...(rnd() < 0.7 ? { host: pick(rnd, ["svc.local", "svc", "other.svc", "é.svc"]) } : {}),
        headers,
      },
    };
    const want = engine.query(q);
    const got = engine.judgeHttp(q);
    assert.deepEqual(
      got,
      {
        verdict: want.verdict,
        cookie: want.cookie,
        l7: { status: want.l7.status, entry: want.l7.entry, rule: want.l7.rule },
      },
      JSON.stringify(q),
    );
    seen.add(`${want.verdict}/${want.l7.status}/${want.l7.rule}`);
  }
  // Every kind of outcome happened: deny, allow, each HTTP rule, and an L7 denial.
  for (const k of ["deny/not-evaluated/-1", "allow/not-evaluated/-1", "redirect/denied/-1"]) {
    assert.ok(seen.has(k), `never saw ${k}: ${[...seen]}`);
  }
  for (let r = 0; r < 5; r++) assert.ok(seen.has(`redirect/allowed/${r}`), `rule ${r} never`);
});

/** The engine's normalisation (policy-wasm/assembly/http.ts) without its fast path. */
function normalize(raw: string): string {
  const q = raw.indexOf("?");
  const path = q < 0 ? raw : raw.slice(0, q);
  const query = q < 0 ? "" : raw.slice(q);
  if (!/^(\/|%2F)/i.test(path)) return raw;
  const hex = (c: string) => /^[0-9a-fA-F]$/.test(c) ? parseInt(c, 16) : -1;
  let decoded = "";
  for (let i = 0; i < path.length; i++) {
    const [h, l] = [hex(path[i + 1] ?? ""), hex(path[i + 2] ?? "")];
    if (path[i] === "%" && i + 2 < path.length && h >= 0 && l >= 0) {
      const v = String.fromCharCode((h << 4) | l);
      decoded += /[A-Za-z0-9\-._~/\\]/.test(v) ? v : "%" + path.slice(i + 1, i + 3).toUpperCase();
      i += 2;
    } else decoded += path[i];
  }
  const parts = decoded.replaceAll("\\", "/").split("/");
  const stack: string[] = [];
  let trailing = false;
  for (let i = 1; i < parts.length; i++) {
    const seg = parts[i]!;
    trailing = false;
    if (seg === "" && i < parts.length - 1) continue;
    if (seg === "." || seg === "..") {
      if (seg === "..") stack.pop();
      trailing = true;
      continue;
    }
    stack.push(seg);
  }
  let out = stack.map((s) => "/" + s).join("");
  if (out === "" || trailing) out += "/";
  return out + query;
}

const quote = (s: string) =>
  JSON.stringify(s.replace(/[\\^$.*+?()[\]{}|]/g, "\\$&")).slice(1, -1).replaceAll('"', '\\"');

Deno.test("the engine normalises paths as its slow path does, fast path or not", async () => {
  const { engine, load, server, peers } = await setup(RULES);
  const rnd = prng(0x9a7);
  let normalAlready = 0;
  for (let i = 0; i < 120; i++) {
    const path = genPath(rnd);
    const want = normalize(path);
    if (want === path) normalAlready++;
    load(`              - {path: "${quote(want)}"}`);
    const q = {
      endpoint: server.id,
      direction: "ingress" as const,
      peer: peers[0]!.identity,
      proto: 6,
      port: 80,
      http: { method: "GET", path },
    };
    assert.equal(engine.judgeHttp(q).l7.status, "allowed", `${path} → ${want}`);
    assert.equal(engine.query(q).l7.status, "allowed", `${path} → ${want}`);
  }
  assert.ok(normalAlready > 20 && normalAlready < 100, `fast path share: ${normalAlready}/120`);
});
