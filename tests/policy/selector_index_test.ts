// The selector cache's index (policy-wasm/assembly/selectors.ts) tests a new identity only
// against the selectors that could select it. Whatever the operator (In, NotIn, Exists,
// DoesNotExist, matchLabels, the empty selector), an engine that saw identities come, change and
// go one at a time must hold exactly the map-states of an engine that loaded the final identities
// and then the rules (a full recomputation), and mapStateForIdentity() must give exactly the full
// map-state's entries for the identity that changed. Seeded, so failures reproduce.

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
const OPS = ["In", "NotIn", "Exists", "DoesNotExist", "matchLabels", "empty"] as const;
type Op = typeof OPS[number];

const pick = <T>(r: () => number, list: readonly T[]): T => list[Math.floor(r() * list.length)]!;

/** A selector whose first requirement uses `op` (matchLabels: In with one value). */
function selectorFor(r: () => number, op: Op): SelectorSpec {
  if (op === "empty") return { kind: "labels", requirements: [] };
  const first = {
    source: r() < 0.8 ? "k8s" : "any",
    key: pick(r, KEYS),
    op: op === "matchLabels" ? "In" as const : op,
    values: op === "Exists" || op === "DoesNotExist"
      ? []
      : op === "In"
      ? [pick(r, VALUES), pick(r, VALUES)]
      : [pick(r, VALUES)],
  };
  const second = r() < 0.3
    ? [{ source: "k8s", key: pick(r, KEYS), op: "In" as const, values: [pick(r, VALUES)] }]
    : [];
  return { kind: "labels", requirements: [first, ...second] };
}

function spec(r: () => number): { spec: PolicySpec; ops: Op[] } {
  const ops: Op[] = [];
  const rules: RuleSpec[] = Array.from({ length: 3 }, (_, ri) => ({
    policy: 0,
    path: `specs[${ri}]`,
    subject: { kind: "labels", requirements: [] },
    subjectKind: "endpoint",
    defaultDeny: { ingress: true, egress: r() < 0.5 },
    requires: { ingress: [], egress: [] },
    labels: [],
    entries: Array.from({ length: 4 }, (_, i): EntrySpec => {
      const op = pick(r, OPS);
      ops.push(op);
      return {
        direction: r() < 0.6 ? "ingress" : "egress",
        deny: r() < 0.2,
        peers: [{ selector: selectorFor(r, op), requiresApply: true }],
        ports: r() < 0.5 ? [] : [{ proto: 6, port: pick(r, [80, 443]), endPort: 0 }].map((p) => ({
          ...p,
          endPort: p.port,
        })),
        cookie: ri * 10 + i + 1,
        path: `specs[${ri}].e${i}`,
      };
    }),
  }));
  return {
    spec: { policies: [{ kind: "CiliumClusterwideNetworkPolicy", name: "index" }], rules },
    ops,
  };
}

function randomLabels(r: () => number): string[] {
  return KEYS.filter(() => r() < 0.6).map((k) =>
    `${r() < 0.85 ? "k8s" : "container"}:${k}=${pick(r, VALUES)}`
  );
}

/** Which operators select `labels` through the policy's entries (for the coverage guard). */
function opsSelecting(p: PolicySpec, ops: Op[], labels: string[]): Op[] {
  const has = (src: string, key: string) =>
    labels.filter((l) => {
      const [s, rest] = l.split(":") as [string, string];
      const [k] = rest.split("=");
      return k === key && (src === "any" || s === src);
    }).map((l) => l.split("=")[1]!);
  const out: Op[] = [];
  p.rules.flatMap((rule) => rule.entries).forEach((e, i) => {
    const sel = e.peers[0]!.selector;
    if (sel.kind !== "labels") return;
    const holds = sel.requirements.every((q) => {
      const vals = has(q.source, q.key);
      if (q.op === "In") return vals.some((v) => q.values.includes(v));
      if (q.op === "NotIn") return !vals.some((v) => q.values.includes(v));
      if (q.op === "Exists") return vals.length > 0;
      return vals.length === 0;
    });
    if (holds) out.push(ops[i]!);
  });
  return out;
}

Deno.test("the selector index gives the map-states of a full recomputation after each identity change", async () => {
  const inc = await PolicyEngine.create();
  const hit = new Map<Op, number>();
  let steps = 0;
  for (let seed = 1; seed <= 12; seed++) {
    const r = prng(seed);
    const { spec: p, ops } = spec(r);
    const live = new Map<number, IdentitySpec>(RESERVED_IDENTITIES.map((i) => [i.id, i]));
    for (let i = 0; i < 6; i++) live.set(300 + i, { id: 300 + i, labels: randomLabels(r) });
    const eps: EngineEndpoint[] = [300, 301, 302].map((id) => ({
      id,
      identity: id,
      namedPorts: [],
    }));
    inc.removeIdentities(inc.identities.map((i) => i.id));
    inc.upsertIdentities([...live.values()]);
    inc.setPolicy(p);
    inc.setEndpoints(eps);
    // Churn: new identities, changed labels (same id), removals (their slots are reused).
    const rounds = seed === 1 ? 700 : 40;
    for (let step = 0; step < rounds; step++) {
      const x = r();
      const id = x < 0.5 ? 400 + Math.floor(r() * 40) : 303 + Math.floor(r() * 3);
      if (r() < 0.3 && live.has(id) && id >= 400) {
        inc.removeIdentities([id]);
        live.delete(id);
      } else {
        const labels = randomLabels(r);
        live.set(id, { id, labels });
        inc.upsertIdentities([{ id, labels }]);
        for (const ep of eps) {
          const full = inc.computeMapState(ep.id).entries.filter((e) => e.identity === id);
          const part = inc.mapStateForIdentity(ep.id, id).entries;
          assert.deepEqual(part, full, `seed ${seed} step ${step}: endpoint ${ep.id}, id ${id}`);
          if (full.length > 0) {
            for (const op of opsSelecting(p, ops, labels)) hit.set(op, (hit.get(op) ?? 0) + 1);
          }
        }
      }
      if (step % 10 !== 9 && step !== rounds - 1) continue;
      const fresh = await PolicyEngine.create();
      fresh.upsertIdentities([...live.values()].sort((a, b) => a.id - b.id));
      fresh.setPolicy(p);
      fresh.setEndpoints(eps);
      for (const ep of eps) {
        assert.deepEqual(
          inc.computeMapState(ep.id),
          fresh.computeMapState(ep.id),
          `seed ${seed} step ${step}: endpoint ${ep.id}`,
        );
      }
      fresh.close();
      steps++;
    }
  }
  assert.ok(steps > 100, `compared only ${steps} times`);
  for (const op of OPS) {
    assert.ok((hit.get(op) ?? 0) > 20, `too few identities selected via ${op}: ${[...hit]}`);
  }
  inc.close();
});
