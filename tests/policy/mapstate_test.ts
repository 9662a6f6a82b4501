// The map-state the engine computes for the kernel must give, under the kernel's lookup order
// (exact identity, then identity 0; protocol+port before protocol 0; then the direction's
// default), exactly the verdict of the engine's own query() at every point. Randomised policies
// over a small label space (seeded, so failures reproduce), plus hand-written cases.

import assert from "node:assert/strict";
import {
  type EntrySpec,
  type IdentitySpec,
  type MapState,
  PolicyEngine,
  type PolicySpec,
  type RuleSpec,
  type SelectorSpec,
} from "../../policy-wasm/mod.ts";
import { RESERVED_IDENTITIES } from "../../policy-wasm/src/labels.ts";
import { prng } from "../helpers/prng.ts";

/** The kernel's lookup (bpf/lib/policy.h), on map-state ranges instead of LPM prefixes. */
export function kernelLookup(
  ms: MapState,
  dir: "ingress" | "egress",
  identity: number,
  proto: number,
  port: number,
): "allow" | "deny" | "redirect" | "audit" {
  if (!ms.enforcement) return "allow";
  for (const id of [identity, 0]) {
    const mine = ms.entries.filter((e) => e.direction === dir && e.identity === id);
    const exact = mine.find((e) => e.proto === proto && e.portLo <= port && port <= e.portHi);
    const any = mine.find((e) => e.proto === 0);
    const hit = exact ?? any;
    if (hit) return hit.verdict;
  }
  return ms.defaultDeny[dir] ? "deny" : "allow";
}

const KEYS = ["app", "tier", "env"];
const VALUES = ["a", "b", "c"];

function randomSelector(r: () => number): SelectorSpec {
  const x = r();
  if (x < 0.12) return { kind: "all" };
  if (x < 0.2) {
    return {
      kind: "labels",
      requirements: [{
        source: "reserved",
        key: r() < 0.5 ? "host" : "world",
        op: "Exists",
        values: [],
      }],
    };
  }
  if (x < 0.28) {
    return { kind: "cidr", cidr: "203.0.113.0/24", except: r() < 0.5 ? ["203.0.113.128/25"] : [] };
  }
  const n = 1 + Math.floor(r() * 2);
  const ops = ["In", "NotIn", "Exists", "DoesNotExist"] as const;
  return {
    kind: "labels",
    requirements: Array.from({ length: n }, () => ({
      source: r() < 0.8 ? "k8s" : "any",
      key: KEYS[Math.floor(r() * KEYS.length)]!,
      op: ops[Math.floor(r() * 4)]!,
      values: [VALUES[Math.floor(r() * VALUES.length)]!],
    })).map((q) => (q.op === "Exists" || q.op === "DoesNotExist" ? { ...q, values: [] } : q)),
  };
}

function randomEntry(r: () => number, i: number): EntrySpec {
  const direction = r() < 0.5 ? "ingress" : "egress";
  const deny = r() < 0.25;
  const withL7 = !deny && r() < 0.3;
  const nPorts = withL7 ? 1 : r() < 0.3 ? 0 : 1 + Math.floor(r() * 2);
  const ports = Array.from({ length: nPorts }, () => {
    const proto = withL7 ? 6 : [0, 6, 17, 132, 1][Math.floor(r() * 5)]!;
    const port = proto === 1
      ? 8
      : withL7
      ? [53, 80, 443][Math.floor(r() * 3)]!
      : [0, 53, 80, 443, 8000][Math.floor(r() * 5)]!;
    const endPort = port === 0
      ? 65535
      : proto !== 1 && r() < 0.3
      ? port + Math.floor(r() * 100)
      : port;
    if (!withL7 && proto !== 1 && r() < 0.15) return { proto, port: 0, endPort: 0, name: "web" };
    return { proto, port, endPort };
  });
  const l7 = withL7
    ? { kind: "http" as const, rules: [{ method: "GET", headers: [], headerMatches: [] }] }
    : undefined;
  const peers = Array.from(
    { length: 1 + Math.floor(r() * 2) },
    () => ({ selector: randomSelector(r), requiresApply: r() < 0.7 }),
  );
  return { direction, deny, peers, ports, ...(l7 ? { l7 } : {}), cookie: 1000 + i, path: `e${i}` };
}

function randomSpec(r: () => number): PolicySpec {
  const rules: RuleSpec[] = Array.from({ length: 1 + Math.floor(r() * 4) }, (_, ri) => ({
    policy: 0,
    path: `specs[${ri}]`,
    subject: r() < 0.2 ? { kind: "labels", requirements: [] } : randomSelector(r),
    subjectKind: "endpoint",
    defaultDeny: { ingress: r() < 0.6, egress: r() < 0.4 },
    requires: {
      ingress: r() < 0.2 ? [randomSelector(r)] : [],
      egress: r() < 0.1 ? [randomSelector(r)] : [],
      ingressDeny: r() < 0.2 ? [randomSelector(r)] : [],
    },
    entries: Array.from({ length: Math.floor(r() * 5) }, (_, i) => randomEntry(r, ri * 10 + i)),
    labels: [],
  }));
  // About a third of the rules belong to a policy in audit mode.
  for (const rule of rules) if (r() < 0.35) rule.policy = 1;
  return {
    policies: [
      { kind: "CiliumClusterwideNetworkPolicy", name: "random" },
      { kind: "CiliumClusterwideNetworkPolicy", name: "random-audit", mode: "audit" },
    ],
    rules,
  };
}

function randomIdentities(r: () => number): IdentitySpec[] {
  const out: IdentitySpec[] = [...RESERVED_IDENTITIES];
  for (let i = 0; i < 8; i++) {
    const labels = KEYS.filter(() => r() < 0.7).map((k) =>
      `${r() < 0.9 ? "k8s" : "container"}:${k}=${VALUES[Math.floor(r() * 3)]}`
    );
    out.push({ id: 256 + i, labels });
  }
  out.push({
    id: 16777217,
    labels: ["cidr:203.0.113.0/24", "reserved:world"],
    cidr: "203.0.113.0/24",
  });
  out.push({
    id: 16777218,
    labels: ["cidr:203.0.113.128/25", "reserved:world"],
    cidr: "203.0.113.128/25",
  });
  return out;
}

const POINTS: [number, number][] = [
  [6, 0],
  [6, 52],
  [6, 53],
  [6, 80],
  [6, 81],
  [6, 443],
  [6, 8000],
  [6, 8050],
  [6, 8099],
  [6, 65535],
  [17, 53],
  [17, 54],
  [17, 443],
  [132, 80],
  [132, 8000],
  [1, 8],
  [1, 0],
  [58, 128],
];

const seen = new Map<string, number>();

function compare(engine: PolicyEngine, ids: IdentitySpec[], seed: number): number {
  let checked = 0;
  for (const ep of ids.filter((i) => i.id >= 256 && i.id < 1000)) {
    const ms = engine.computeMapState(ep.id);
    for (const dir of ["ingress", "egress"] as const) {
      for (const peer of ids) {
        for (const [proto, port] of POINTS) {
          const q = engine.query({ endpoint: ep.id, direction: dir, peer: peer.id, proto, port });
          const k = kernelLookup(ms, dir, peer.id, proto, port);
          if (q.verdict !== k) {
            throw new assert.AssertionError({
              message:
                `seed ${seed}: endpoint ${ep.id} ${dir} peer ${peer.id} ${proto}/${port}: query says ${q.verdict} (${q.decision}), map-state says ${k}\n${
                  JSON.stringify(ms.entries.filter((e) =>
                    e.direction === dir && (e.identity === peer.id || e.identity === 0)
                  ))
                }`,
            });
          }
          seen.set(`${q.verdict}/${q.decision}`, (seen.get(`${q.verdict}/${q.decision}`) ?? 0) + 1);
          checked++;
        }
      }
    }
  }
  return checked;
}

Deno.test("computeMapState() agrees with query() at every point for random policies", async () => {
  const engine = await PolicyEngine.create();
  let checked = 0;
  for (let seed = 1; seed <= 60; seed++) {
    const r = prng(seed);
    const ids = randomIdentities(r);
    engine.removeIdentities(engine.identities.map((i) => i.id));
    engine.upsertIdentities(ids);
    engine.setPolicy(randomSpec(r), {
      enforcement: "default",
      allowLocalhost: r() < 0.8,
      clusterName: "default",
    });
    engine.setEndpoints(
      ids.filter((i) => i.id >= 256 && i.id < 1000).map((i) => ({
        id: i.id,
        identity: i.id,
        namedPorts: r() < 0.5 ? [] : [{
          name: "web",
          port: r() < 0.5 ? 80 : 8050,
          protocol: r() < 0.7 ? "TCP" as const : "UDP" as const,
        }],
      })),
    );
    checked += compare(engine, ids, seed);
  }
  assert.ok(checked > 50_000, `checked only ${checked} points`);
  // The random policies must exercise every kind of decision, or the comparison proves little.
  for (
    const k of [
      "allow/allow-rule",
      "deny/deny-rule",
      "deny/default-deny",
      "redirect/redirect",
      "allow/default-allow",
      "allow/allow-localhost",
      "audit/audit-deny-rule",
      "audit/audit-default-deny",
    ]
  ) {
    assert.ok((seen.get(k) ?? 0) > 100, `too few "${k}" points: ${JSON.stringify([...seen])}`);
  }
  engine.close();
});

Deno.test("mapStateForIdentity() returns exactly the full map-state's entries for that identity", async () => {
  const engine = await PolicyEngine.create();
  for (let seed = 100; seed < 130; seed++) {
    const r = prng(seed);
    const ids = randomIdentities(r);
    engine.removeIdentities(engine.identities.map((i) => i.id));
    engine.upsertIdentities(ids);
    engine.setPolicy(randomSpec(r));
    engine.setEndpoints(
      ids.filter((i) => i.id >= 256 && i.id < 1000).map((i) => ({
        id: i.id,
        identity: i.id,
        namedPorts: [],
      })),
    );
    const newcomer: IdentitySpec = { id: 999, labels: ["k8s:app=a", "k8s:tier=b"] };
    engine.upsertIdentities([newcomer]);
    for (const ep of ids.filter((i) => i.id >= 256 && i.id < 1000)) {
      const full = engine.computeMapState(ep.id).entries.filter((e) => e.identity === 999);
      const inc = engine.mapStateForIdentity(ep.id, 999).entries;
      assert.deepEqual(inc, full, `seed ${seed}, endpoint ${ep.id}`);
    }
  }
  engine.close();
});

Deno.test("map-state: deny beats a more specific allow, L3 allow covers ICMP, L4-only is identity 0", async () => {
  const engine = await PolicyEngine.create();
  engine.upsertIdentities([...RESERVED_IDENTITIES, { id: 300, labels: ["k8s:app=web"] }, {
    id: 301,
    labels: ["k8s:app=db"],
  }]);
  const web: SelectorSpec = {
    kind: "labels",
    requirements: [{ source: "k8s", key: "app", op: "In", values: ["web"] }],
  };
  const db: SelectorSpec = {
    kind: "labels",
    requirements: [{ source: "k8s", key: "app", op: "In", values: ["db"] }],
  };
  const entry = (e: Partial<EntrySpec> & Pick<EntrySpec, "peers">, i: number): EntrySpec => ({
    direction: "ingress",
    deny: false,
    ports: [],
    cookie: i,
    path: `e${i}`,
    ...e,
  });
  engine.setPolicy({
    policies: [{ kind: "CiliumClusterwideNetworkPolicy", name: "t" }],
    rules: [{
      policy: 0,
      path: "spec",
      subject: db,
      subjectKind: "endpoint",
      defaultDeny: { ingress: true, egress: false },
      requires: { ingress: [], egress: [] },
      labels: [],
      entries: [
        entry({ peers: [{ selector: web, requiresApply: true }] }, 1),
        entry({
          peers: [{ selector: { kind: "all" }, requiresApply: false }],
          ports: [{ proto: 6, port: 5432, endPort: 5432 }],
        }, 2),
        entry({
          deny: true,
          peers: [{ selector: web, requiresApply: true }],
          ports: [{ proto: 6, port: 22, endPort: 22 }],
        }, 3),
      ],
    }],
  });
  engine.setEndpoints([{ id: 1, identity: 301, namedPorts: [] }]);
  const ms = engine.computeMapState(1);
  assert.equal(kernelLookup(ms, "ingress", 300, 6, 22), "deny");
  assert.equal(kernelLookup(ms, "ingress", 300, 6, 23), "allow");
  assert.equal(kernelLookup(ms, "ingress", 300, 1, 8), "allow");
  assert.equal(kernelLookup(ms, "ingress", 2, 6, 5432), "allow");
  assert.equal(kernelLookup(ms, "ingress", 2, 6, 5433), "deny");
  assert.equal(kernelLookup(ms, "ingress", 2, 1, 8), "deny");
  const wildcard = ms.entries.filter((e) => e.identity === 0);
  assert.deepEqual(wildcard.map((e) => [e.proto, e.portLo, e.portHi, e.verdict, e.cookie]), [[
    6,
    5432,
    5432,
    "allow",
    2,
  ]]);
  const deny = ms.entries.find((e) => e.identity === 300 && e.verdict === "deny");
  assert.equal(deny?.cookie, 3);
  engine.close();
});

Deno.test("the selector cache gives the same map-states whether rules or identities come first", async () => {
  // Rules loaded after the identities rebuild the cache with the label index; identities added
  // after the rules go through the incremental path. Both must select the same identities.
  const a = await PolicyEngine.create();
  const b = await PolicyEngine.create();
  let compared = 0;
  for (let seed = 200; seed < 240; seed++) {
    const r = prng(seed);
    const ids = randomIdentities(r);
    const spec = randomSpec(r);
    const eps = ids.filter((i) => i.id >= 256 && i.id < 1000).map((i) => ({
      id: i.id,
      identity: i.id,
      namedPorts: [],
    }));
    for (const e of [a, b]) e.removeIdentities(e.identities.map((i) => i.id));
    a.upsertIdentities(ids);
    a.setPolicy(spec);
    b.setPolicy(spec);
    b.upsertIdentities(ids);
    a.setEndpoints(eps);
    b.setEndpoints(eps);
    for (const ep of eps) {
      assert.deepEqual(a.computeMapState(ep.id), b.computeMapState(ep.id), `seed ${seed}`);
      compared++;
    }
  }
  assert.ok(compared > 200);
  a.close();
  b.close();
});
