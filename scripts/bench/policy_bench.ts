// `deno task bench policy`: (a) full resolution of 1,000 rules × 10,000 identities into
// map-states, against the incremental add of one identity; (b) verdict queries per second,
// against a plain JavaScript Map lookup of the computed map-state (what the kernel does);
// (c) HTTP L7 matches per second, the engine's WASM regex against JavaScript RegExp: one call per
// match, then per request (all patterns as one set, batches of requests; issue 10's target), and
// the proxy's verdict path (judgeHttp) against a full query().

import { type EngineEndpoint, type IdentitySpec, PolicyEngine } from "../../policy-wasm/mod.ts";
import { RESERVED_IDENTITIES } from "../../policy-wasm/src/labels.ts";
import { prng } from "../../tests/helpers/prng.ts";
import { identities, rules } from "./_policy_workload.ts";
import { regexSetRows } from "./_regex_set_rows.ts";

function time<T>(fn: () => T): [T, number] {
  const t0 = performance.now();
  const v = fn();
  return [v, performance.now() - t0];
}

const fmt = (n: number) => n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(2);

export async function main(args: string[]): Promise<void> {
  const nRules = Number(args.find((a) => a.startsWith("--rules="))?.slice(8) ?? 1000);
  const nIds = Number(args.find((a) => a.startsWith("--identities="))?.slice(13) ?? 10000);
  const nEps = Number(args.find((a) => a.startsWith("--endpoints="))?.slice(12) ?? 100);
  const r = prng(42);
  const ids = identities(nIds, r);
  const spec = rules(nRules, r);
  const engine = await PolicyEngine.create();
  console.error(
    `bench policy: ${nRules} rules × ${nIds} identities, map-states for ${nEps} local endpoints`,
  );

  // (a) full resolution vs one identity added.
  const [, tIds] = time(() => engine.upsertIdentities(ids));
  const [, tRules] = time(() => engine.setPolicy(spec));
  const eps: EngineEndpoint[] = ids.slice(
    RESERVED_IDENTITIES.length,
    RESERVED_IDENTITIES.length + nEps,
  ).map((id, i) => ({ id: i + 1, identity: id.id, namedPorts: [] }));
  engine.setEndpoints(eps);
  const [states, tMap] = time(() => eps.map((e) => engine.computeMapState(e.id)));
  const entries = states.reduce((n, s) => n + s.entries.length, 0);
  const newcomer: IdentitySpec = {
    id: 256 + nIds,
    labels: ["k8s:app=app1", "k8s:io.kubernetes.pod.namespace=ns1", "k8s:tier=web", "k8s:pod=new"],
  };
  const [, tInc] = time(() => {
    engine.upsertIdentities([newcomer]);
    for (const e of eps) engine.mapStateForIdentity(e.id, newcomer.id);
  });
  const full = tRules + tMap;
  console.log(`(a) resolution`);
  console.log(`    load ${nIds} identities                  ${fmt(tIds)} ms`);
  console.log(`    load ${nRules} rules + selector cache       ${fmt(tRules)} ms`);
  console.log(
    `    map-states of ${nEps} endpoints             ${fmt(tMap)} ms (${fmt(entries)} entries, ${
      fmt(tMap / nEps)
    } ms per endpoint)`,
  );
  console.log(`    full resolution                        ${fmt(full)} ms`);
  console.log(`    add 1 identity + ${nEps} incremental diffs   ${fmt(tInc)} ms`);
  console.log(`    ratio full / incremental               ${fmt(full / tInc)}×`);

  // (b) verdict queries vs a Map lookup of the map-state.
  const q = prng(7);
  const N = 100_000;
  const points = Array.from({ length: N }, () => ({
    ep: eps[Math.floor(q() * eps.length)]!,
    peer: ids[Math.floor(q() * ids.length)]!.id,
    port: [80, 443, 8080, 5432, 22][Math.floor(q() * 5)]!,
  }));
  const [, tQuery] = time(() => {
    for (const p of points) {
      engine.query({
        endpoint: p.ep.id,
        direction: "ingress",
        peer: p.peer,
        proto: 6,
        port: p.port,
      });
    }
  });
  const maps = new Map<number, Map<string, string>>();
  states.forEach((s, i) => {
    const m = new Map<string, string>();
    for (const e of s.entries) {
      for (let port = e.portLo; port <= Math.min(e.portHi, e.portLo + 64); port++) {
        m.set(`${e.direction}/${e.identity}/${e.proto}/${port}`, e.verdict);
      }
    }
    maps.set(eps[i]!.id, m);
  });
  let hits = 0;
  const [, tMapLookup] = time(() => {
    for (const p of points) {
      const m = maps.get(p.ep.id)!;
      const v = m.get(`ingress/${p.peer}/6/${p.port}`) ?? m.get(`ingress/${p.peer}/0/0`) ??
        m.get(`ingress/0/6/${p.port}`);
      if (v) hits++;
    }
  });
  console.log(`(b) verdict lookups (${fmt(N)} random points, ${hits} map hits)`);
  console.log(`    engine query() with explanation        ${fmt(N / tQuery * 1000)} /s`);
  console.log(`    baseline: JS Map lookup of map-state   ${fmt(N / tMapLookup * 1000)} /s`);
  console.log(`    ratio baseline / engine                ${fmt(tQuery / tMapLookup)}×`);

  // (c) HTTP regexes: the engine's WASM RE2 engine vs JavaScript RegExp.
  const patterns = [
    "/public/.*",
    "/api/v[0-9]+/users/[a-z0-9-]+",
    "GET|HEAD",
    "[0-9]+",
    "/static/.*\\.(css|js|png)",
  ];
  const inputs = [
    "/public/index.html?x=1",
    "/api/v2/users/alice-42",
    "/api/v2/users/ALICE",
    "GET",
    "POST",
    "12345678",
    "12a",
    "/static/app/main.js",
    "/static/app/main.jsx",
    "/" + "a/".repeat(60),
  ];
  const M = 200_000;
  let wasmTrue = 0;
  let jsTrue = 0;
  const matchers = patterns.map((p) => engine.regexMatcher(p));
  const regexps = patterns.map((p) => new RegExp(`^(?:${p})$`));
  const [, tWasm] = time(() => {
    for (let i = 0; i < M; i++) {
      if (matchers[i % patterns.length]!.match(inputs[i % inputs.length]!)) wasmTrue++;
    }
  });
  const [, tJs] = time(() => {
    for (let i = 0; i < M; i++) {
      if (regexps[i % patterns.length]!.test(inputs[i % inputs.length]!)) jsTrue++;
    }
  });
  for (const m of matchers) m.release();
  if (wasmTrue !== jsTrue) {
    throw new Error(`WASM and RegExp disagree: ${wasmTrue} vs ${jsTrue} matches`);
  }
  console.log(
    `(c) HTTP regex matches (${
      fmt(M)
    }, ${patterns.length} patterns, same results: ${wasmTrue} matches)`,
  );
  console.log(`    one call per match, regexMatcher()     ${fmt(M / tWasm * 1000)} /s`);
  console.log(`    baseline: JavaScript RegExp            ${fmt(M / tJs * 1000)} /s`);
  console.log(`    ratio RegExp / WASM                    ${fmt(tWasm / tJs)}×`);
  regexSetRows(engine, patterns, inputs, regexps);
  const Q = 50_000;
  const [, tL7] = time(() => {
    for (let i = 0; i < Q; i++) {
      const p = points[i]!;
      engine.query({
        endpoint: p.ep.id,
        direction: "ingress",
        peer: p.peer,
        proto: 6,
        port: p.port,
        http: { method: "GET", path: inputs[i % inputs.length]! },
      });
    }
  });
  console.log(`    full L7 verdict queries (HTTP)         ${fmt(Q / tL7 * 1000)} /s`);
  const [, tJudge] = time(() => {
    for (let i = 0; i < Q; i++) {
      const p = points[i]!;
      engine.judgeHttp({
        endpoint: p.ep.id,
        direction: "ingress",
        peer: p.peer,
        proto: 6,
        port: p.port,
        http: { method: "GET", path: inputs[i % inputs.length]! },
      });
    }
  });
  console.log(`    judgeHttp(), the proxy's path          ${fmt(Q / tJudge * 1000)} /s`);
  console.log(`    ratio query() / judgeHttp()            ${fmt(tL7 / tJudge)}×`);
  engine.close();
}
