// The PolicyEngine facade's promise that a trap never leaves a dead or different engine: traps are
// injected into random exports (before or after the export did its work) during random sequences
// of operations, and the engine is compared with a model engine that saw only the operations that
// succeeded. Properties: a trapped operation throws EngineError and changes nothing; every later
// answer (queries, map-states, IP lookups, regex checks) equals the model's.

import {
  compilePolicies,
  EngineError,
  type IdentitySpec,
  type IpcacheEntry,
  PolicyEngine,
  type PolicySpec,
  SimCluster,
} from "../../policy-wasm/mod.ts";
import { Findings, fuzzSeed, iterations, Rand } from "./_rand.ts";
import { loadSeeds } from "./_raw_engine.ts";
import { SEED_ENDPOINTS, SEED_LOOKUPS, SEED_POLICY } from "./_seed_policy.ts";

const seeds = await loadSeeds();

const OTHER_POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: other}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: PUT}]}}]
  egress:
    - toCIDR: [10.0.0.0/8]
`;

/**
 * Exports that can trap (they allocate or compute). output_ptr(), output_len(),
 * regex_error_offset() and regex_release() only read or store a global and cannot.
 */
const TRAPPABLE = new Set([
  "input_reserve",
  "rules_load",
  "identities_upsert",
  "identities_remove",
  "endpoints_load",
  "endpoints_update",
  "endpoints_affected",
  "ipcache_update",
  "ip_lookup",
  "query",
  "mapstate_compute",
  "mapstate_for_identity",
  "regex_compile",
  "regex_match",
  "query_verdict",
]);

/**
 * Replaces WebAssembly.Instance so that the `armed.nth` call (1-based) of an export that can
 * trap does trap, once, before or after doing its work.
 */
class TrapInjector {
  armed: { nth: number; after: boolean } | undefined;
  calls = 0;
  fired: string[] = [];
  #orig = WebAssembly.Instance;

  install(): void {
    const orig = this.#orig;
    // deno-lint-ignore no-this-alias
    const injector = this;
    const Injecting = function (module: WebAssembly.Module, imports?: WebAssembly.Imports) {
      const inst = new orig(module, imports);
      const exports: Record<string, unknown> = {};
      for (const [name, v] of Object.entries(inst.exports)) {
        if (typeof v !== "function" || !TRAPPABLE.has(name)) {
          exports[name] = v;
          continue;
        }
        const fn = v as (...a: unknown[]) => unknown;
        exports[name] = (...args: unknown[]) => {
          const a = injector.armed;
          if (a === undefined || ++injector.calls !== a.nth) return fn(...args);
          injector.armed = undefined;
          injector.fired.push(`${name}${a.after ? " after" : ""}`);
          if (a.after) fn(...args);
          throw new WebAssembly.RuntimeError("unreachable (injected by the test)");
        };
      }
      return { exports };
    };
    (WebAssembly as { Instance: unknown }).Instance = Injecting;
  }

  uninstall(): void {
    (WebAssembly as { Instance: unknown }).Instance = this.#orig;
  }
}

type Op = { name: string; run(e: PolicyEngine): unknown };

function outcome(e: PolicyEngine, op: Op): { ok: unknown } | { error: Error } {
  try {
    return { ok: op.run(e) };
  } catch (err) {
    return { error: err as Error };
  }
}

const show = (o: { ok: unknown } | { error: Error }) =>
  "ok" in o ? JSON.stringify(o.ok) : `${o.error.name}: ${o.error.message}`;

Deno.test("PolicyEngine recovers from a trap in any export: later answers equal a model's", async () => {
  const seed = fuzzSeed(0x7a9);
  const r = new Rand(seed);
  const found = new Findings();
  const model = await PolicyEngine.create(seeds.module);
  const specs: PolicySpec[] = [
    compilePolicies({ text: SEED_POLICY }).spec,
    compilePolicies({ text: OTHER_POLICY }).spec,
    { policies: [], rules: [] },
  ];
  const cluster = new SimCluster({ endpoints: SEED_ENDPOINTS });
  const extra: IdentitySpec[] = [
    { id: 300, labels: ["k8s:app=server", "k8s:tier=web"] },
    { id: 301, labels: ["k8s:app=other"] },
    { id: 16777300, labels: ["cidr:10.1.0.0/16"], cidr: "10.1.0.0/16" },
  ];
  const identityPool = [...cluster.identities, ...extra];
  const prefixes = ["10.0.0.1", "10.0.0.2", "10.0.0.0/24", "10.1.2.3", "fd00::1", "fd00::/64"];
  const idNumbers = [1, 2, 256, 257, 258, 300, 301];
  const entry = (): IpcacheEntry => ({ prefix: r.pick(prefixes), identity: r.pick(idNumbers) });
  const ops: (() => Op)[] = [
    () => {
      const i = r.int(specs.length);
      return { name: `setPolicy(#${i})`, run: (e) => e.setPolicy(specs[i]!) };
    },
    () => {
      const list = identityPool.filter(() => r.chance(0.4));
      return {
        name: `upsertIdentities(${list.map((i) => i.id)})`,
        run: (e) => e.upsertIdentities(list),
      };
    },
    () => {
      const ids = idNumbers.filter(() => r.chance(0.2));
      return { name: `removeIdentities(${ids})`, run: (e) => e.removeIdentities(ids) };
    },
    () => {
      const eps = cluster.endpoints.filter(() => r.chance(0.8)).map((ep) => ({
        id: ep.id,
        identity: r.chance(0.8) ? ep.identity : r.pick(idNumbers),
        namedPorts: ep.ports,
      }));
      return { name: `setEndpoints(${JSON.stringify(eps)})`, run: (e) => e.setEndpoints(eps) };
    },
    () => {
      const eps = cluster.endpoints.filter(() => r.chance(0.3)).map((ep) => ({
        id: ep.id,
        identity: r.chance(0.8) ? ep.identity : r.pick(idNumbers),
        namedPorts: ep.ports,
      }));
      const gone = seeds.endpointIds.filter(() => r.chance(0.2));
      return {
        name: `updateEndpoints(${JSON.stringify(eps)}, ${gone})`,
        run: (e) => e.updateEndpoints(eps, gone),
      };
    },
    () => {
      const id = r.pick(idNumbers);
      return { name: `endpointsAffected(${id})`, run: (e) => e.endpointsAffected(id) };
    },
    () => {
      const ups = Array.from({ length: r.int(3) }, entry);
      const dels = Array.from({ length: r.int(2) }, entry);
      return {
        name: `updateIpcache(${JSON.stringify(ups)}, ${JSON.stringify(dels)})`,
        run: (e) => e.updateIpcache(ups, dels),
      };
    },
    () => {
      const q = r.pick(seeds.queries);
      return { name: `query(${JSON.stringify(q)})`, run: (e) => e.query(q) };
    },
    () => {
      const q = r.pick(seeds.queries);
      const h = { ...q, http: q.http ?? { method: "GET", path: "/public/a/../b" } };
      return { name: `judgeHttp(${JSON.stringify(h)})`, run: (e) => e.judgeHttp(h) };
    },
    () => {
      const ep = r.pick([...seeds.endpointIds, 77]);
      return { name: `computeMapState(${ep})`, run: (e) => e.computeMapState(ep) };
    },
    () => {
      const ep = r.pick(seeds.endpointIds), id = r.pick(idNumbers);
      return {
        name: `mapStateForIdentity(${ep}, ${id})`,
        run: (e) => e.mapStateForIdentity(ep, id),
      };
    },
    () => {
      const ip = r.pick([...SEED_LOOKUPS, ...prefixes.filter((p) => !p.includes("/"))]);
      return { name: `lookupIp(${ip})`, run: (e) => e.lookupIp(ip) };
    },
    () => {
      const p = r.pick(["a+", "(", "[a-", "x{2000}", "(?i)é.*"]);
      return { name: `checkRegex(${p})`, run: (e) => e.checkRegex(p) };
    },
  ];
  const observe = (e: PolicyEngine): string =>
    [
      ...seeds.queries.map((q) => show(outcome(e, { name: "", run: (x) => x.query(q) }))),
      ...seeds.endpointIds.map((ep) =>
        show(outcome(e, { name: "", run: (x) => x.computeMapState(ep) }))
      ),
      ...[...SEED_LOOKUPS, "10.0.0.2", "fd00::1"].map((ip) =>
        show(outcome(e, { name: "", run: (x) => x.lookupIp(ip) }))
      ),
    ].join("\n");

  const injector = new TrapInjector();
  injector.install();
  let engine: PolicyEngine;
  try {
    engine = await PolicyEngine.create(seeds.module);
  } finally {
    injector.uninstall();
  }
  const history: string[] = [];
  try {
    for (let i = 0; i < iterations(1_200); i++) {
      const op = r.pick(ops)();
      const trap = r.chance(0.35) ? { nth: r.range(1, 3), after: r.chance(0.5) } : undefined;
      injector.install();
      injector.armed = trap;
      injector.calls = 0;
      const before = injector.fired.length;
      let got: ReturnType<typeof outcome>;
      try {
        got = outcome(engine, op);
      } finally {
        injector.armed = undefined;
        injector.uninstall();
      }
      const trapped = injector.fired.length > before;
      history.push(`${op.name}${trapped ? ` [trap in ${injector.fired.at(-1)}]` : ""}`);
      const where = () =>
        `after ${(Deno.env.get("CILIA_FUZZ_VERBOSE") ? history : history.slice(-6)).join(" → ")}`;
      if (trapped) {
        if (!("error" in got) || !(got.error instanceof EngineError)) {
          found.add(`${where()}: a trap gave ${show(got)}, not an EngineError`);
        }
      } else {
        const want = outcome(model, op);
        if (show(got) !== show(want)) {
          found.add(
            `${where()}: answered ${show(got).slice(0, 300)}; the model ${
              show(want).slice(0, 300)
            }`,
          );
        }
      }
      if (i % 5 === 0 || trapped) {
        const a = observe(engine), b = observe(model);
        if (a !== b) {
          const la = a.split("\n"), lb = b.split("\n");
          const k = la.findIndex((l, j) => l !== lb[j]);
          found.add(
            `${where()}: state differs from the model at check ${k}: ${la[k]?.slice(0, 200)} ≠ ${
              lb[k]?.slice(0, 200)
            }`,
          );
          break; // one divergence is enough: everything after it differs too
        }
      }
    }
  } finally {
    engine.close();
    model.close();
  }
  found.assertNone("Trap recovery", seed);
  const kinds = new Set(injector.fired.map((f) => f.split(" ")[0]));
  if (injector.fired.length < 50 || kinds.size < 8) {
    throw new Error(`Only ${injector.fired.length} traps in ${kinds.size} exports were injected`);
  }
});
