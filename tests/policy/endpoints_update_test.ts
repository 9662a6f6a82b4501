// The engine's endpoint list updated in place (updateEndpoints(): add, replace, remove one at a
// time, as CNI ADD and DEL do) must hold exactly the map-states of an engine that loaded the
// final list whole (setEndpoints()), named ports included; and endpointsAffected() must name
// every endpoint whose map-state has entries for a newly added identity (the agent writes only
// those). Seeded random policies and sequences, so failures reproduce.

import assert from "node:assert/strict";
import {
  type EngineEndpoint,
  type EntrySpec,
  type IdentitySpec,
  PolicyEngine,
  type PolicySpec,
  type RuleSpec,
  type SelectorSpec,
} from "../../policy-wasm/mod.ts";
import { RESERVED_IDENTITIES } from "../../policy-wasm/src/labels.ts";
import { prng } from "../helpers/prng.ts";

const KEYS = ["app", "tier", "env"];
const VALUES = ["a", "b", "c"];
const pick = <T>(r: () => number, list: readonly T[]): T => list[Math.floor(r() * list.length)]!;

function selector(r: () => number): SelectorSpec {
  const x = r();
  if (x < 0.1) return { kind: "all" };
  if (x < 0.15) {
    return {
      kind: "labels",
      requirements: [{ source: "reserved", key: "host", op: "Exists", values: [] }],
    };
  }
  const op = pick(r, ["In", "NotIn", "Exists", "DoesNotExist"] as const);
  const values = op === "Exists" || op === "DoesNotExist" ? [] : [pick(r, VALUES)];
  return { kind: "labels", requirements: [{ source: "k8s", key: pick(r, KEYS), op, values }] };
}

function entry(r: () => number, i: number): EntrySpec {
  const named = r() < 0.3;
  const ports = named
    ? [{ proto: 6, port: 0, endPort: 0, name: "web" }]
    : r() < 0.4
    ? []
    : [{ proto: 6, port: pick(r, [80, 443]), endPort: 0 }].map((p) => ({ ...p, endPort: p.port }));
  return {
    direction: named || r() < 0.5 ? "egress" : "ingress",
    deny: r() < 0.2,
    peers: [{ selector: selector(r), requiresApply: true }],
    ports,
    cookie: 100 + i,
    path: `e${i}`,
  };
}

function policy(r: () => number): PolicySpec {
  const rules: RuleSpec[] = Array.from({ length: 2 + Math.floor(r() * 3) }, (_, ri) => ({
    policy: 0,
    path: `specs[${ri}]`,
    subject: r() < 0.3 ? { kind: "labels", requirements: [] } : selector(r),
    subjectKind: "endpoint",
    defaultDeny: { ingress: r() < 0.6, egress: r() < 0.4 },
    requires: { ingress: [], egress: [] },
    entries: Array.from({ length: 1 + Math.floor(r() * 4) }, (_, i) => entry(r, ri * 10 + i)),
    labels: [],
  }));
  return { policies: [{ kind: "CiliumClusterwideNetworkPolicy", name: "eps" }], rules };
}

const labels = (r: () => number) =>
  KEYS.filter(() => r() < 0.7).map((k) => `k8s:${k}=${pick(r, VALUES)}`);

function endpoint(r: () => number, id: number, identities: number[]): EngineEndpoint {
  return {
    id,
    identity: pick(r, identities),
    namedPorts: r() < 0.5 ? [] : [{
      name: "web",
      port: pick(r, [80, 8050]),
      protocol: r() < 0.7 ? "TCP" as const : "UDP" as const,
    }],
  };
}

Deno.test("updateEndpoints() gives the map-states of a full reload on random add/replace/remove sequences", async () => {
  const inc = await PolicyEngine.create();
  let compared = 0, affectedChecks = 0, narrowed = 0;
  for (let seed = 1; seed <= 25; seed++) {
    const r = prng(seed);
    const ids: IdentitySpec[] = [...RESERVED_IDENTITIES];
    for (let i = 0; i < 6; i++) ids.push({ id: 300 + i, labels: labels(r) });
    const spec = policy(r);
    inc.removeIdentities(inc.identities.map((i) => i.id));
    inc.upsertIdentities(ids);
    inc.setPolicy(spec, { enforcement: "default", allowLocalhost: true, clusterName: "default" });
    inc.setEndpoints([]);
    const live = new Map<number, EngineEndpoint>();
    const idNums = ids.filter((i) => i.id >= 300).map((i) => i.id);
    for (let step = 0; step < 40; step++) {
      const x = r();
      const id = 1 + Math.floor(r() * 16);
      if (x < 0.25 && live.size > 0) {
        const gone = pick(r, [...live.keys()]);
        inc.updateEndpoints([], [gone]);
        live.delete(gone);
      } else if (x < 0.35) {
        // A new identity: the endpoints it gives entries are all named by endpointsAffected().
        const fresh = { id: 1000 + seed * 100 + step, labels: labels(r) };
        inc.upsertIdentities([fresh]);
        ids.push(fresh);
        const named = new Set(inc.endpointsAffected(fresh.id));
        for (const ep of live.values()) {
          const has = inc.computeMapState(ep.id).entries.some((e) => e.identity === fresh.id);
          if (has) assert.ok(named.has(ep.id), `seed ${seed} step ${step}: endpoint ${ep.id}`);
          affectedChecks++;
        }
        if (named.size < live.size) narrowed++;
      } else {
        const ep = endpoint(r, id, idNums);
        inc.updateEndpoints([ep]);
        live.set(id, ep);
      }
      const full = await PolicyEngine.create();
      full.upsertIdentities(ids);
      full.setPolicy(spec, inc.options);
      full.setEndpoints([...live.values()]);
      for (const ep of live.values()) {
        const a = inc.computeMapState(ep.id);
        const b = full.computeMapState(ep.id);
        const key = (e: { direction: string; identity: number; proto: number; portLo: number }) =>
          `${e.direction}/${e.identity}/${e.proto}/${e.portLo}`;
        const sort = (m: typeof a) => [...m.entries].sort((p, q) => key(p) < key(q) ? -1 : 1);
        assert.deepEqual(sort(a), sort(b), `seed ${seed} step ${step}: endpoint ${ep.id}`);
        assert.deepEqual({ ...a, entries: [] }, { ...b, entries: [] });
        compared++;
      }
      for (let gone = 1; gone <= 16; gone++) {
        if (live.has(gone)) continue;
        assert.throws(() => inc.computeMapState(gone), /unknown endpoint/);
      }
      full.close();
    }
  }
  assert.ok(compared > 1500, `compared only ${compared} map-states`);
  assert.ok(affectedChecks > 200, `checked endpointsAffected() only ${affectedChecks} times`);
  assert.ok(narrowed > 10, `endpointsAffected() named every endpoint but ${narrowed} times`);
  inc.close();
});
