// `deno task bench scale [--quick]`: the engine's figures of issue #15, each printed next to its
// target (MISSED when it is not met): add and remove one identity with the incremental diffs of
// 100 endpoints at 10k and 100k identities (and their ratio), full resolution of 1,000 rules ×
// 100k identities for 100 endpoints, 10,000 rules × 100k identities, and the memory that state
// takes (RSS of this process, which holds what the agent holds, and the engine's WASM memory).
// Times are medians of repeated runs; --quick repeats less and finishes in under a minute. Full
// resolution also prints this process's CPU time over the same runs (median), which other jobs on
// the machine inflate less than wall time, and how it splits between the rules load (selector
// cache) and the map-states (engine and facade).

import {
  type EngineEndpoint,
  type IdentitySpec,
  PolicyEngine,
  type PolicySpec,
} from "../../policy-wasm/mod.ts";
import { RESERVED_IDENTITIES } from "../../policy-wasm/src/labels.ts";
import { prng } from "../../tests/helpers/prng.ts";
import { identities, rules } from "./_policy_workload.ts";
import process from "node:process";

const ENDPOINTS = 100;
const MIB = 2 ** 20;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const fmt = (n: number) => n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(2);

function time(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

/** CPU time (user + system) of this process so far, in ms. */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** One figure against its target: "<" a bound, printed with PASS or MISSED. */
function report(what: string, value: number, unit: string, target: number): boolean {
  const ok = value < target;
  const label = `${fmt(value)} ${unit}`.padStart(14);
  console.log(
    `  ${what.padEnd(58)} ${label}   target < ${fmt(target)} ${unit}   ${ok ? "PASS" : "MISSED"}`,
  );
  return ok;
}

interface Cluster {
  engine: PolicyEngine;
  ids: IdentitySpec[];
  eps: EngineEndpoint[];
  spec: PolicySpec;
}

/** The identities and endpoints loaded; the rules only with `withRules` (else resolveAll's). */
async function cluster(nIds: number, nRules: number, withRules = true): Promise<Cluster> {
  const r = prng(42);
  const ids = identities(nIds, r);
  const spec = rules(nRules, r);
  const engine = await PolicyEngine.create();
  const eps = ids.slice(RESERVED_IDENTITIES.length, RESERVED_IDENTITIES.length + ENDPOINTS)
    .map((id, i) => ({ id: i + 1, identity: id.id, namedPorts: [] }));
  engine.upsertIdentities(ids);
  if (withRules) engine.setPolicy(spec);
  engine.setEndpoints(eps);
  return { engine, ids, eps, spec };
}

interface Resolution {
  ms: number;
  entries: number;
  /** CPU ms: all of it, the rules load, the map-states. */
  cpu: number;
  cpuRules: number;
  cpuMaps: number;
}

/** Full resolution: the selector cache for the rules, then every endpoint's map-state. */
function resolveAll(c: Cluster): Resolution {
  let entries = 0;
  let c1 = 0;
  const c0 = cpuMs();
  const ms = time(() => {
    c.engine.setPolicy(c.spec);
    c1 = cpuMs();
    for (const e of c.eps) entries += c.engine.computeMapState(e.id).entries.length;
  });
  const c2 = cpuMs();
  return { ms, entries, cpu: c2 - c0, cpuRules: c1 - c0, cpuMaps: c2 - c1 };
}

function reportCpu(runs: Resolution[]): void {
  const m = (f: (r: Resolution) => number) => fmt(median(runs.map(f)));
  console.log(
    `    CPU time of this process ${m((r) => r.cpu)} ms: rules and selector cache ${
      m((r) => r.cpuRules)
    } ms, map-states ${m((r) => r.cpuMaps)} ms (medians; wall time above)`,
  );
}

/**
 * A new identity that policy selects: the labels of the peer identity most endpoints have
 * entries for, with a pod label of its own (no selector names pods).
 */
function selectedNewcomer(c: Cluster, id: number): IdentitySpec {
  const counts = new Map<number, number>();
  for (const e of c.eps) {
    const seen = new Set(c.engine.computeMapState(e.id).entries.map((x) => x.identity));
    for (const i of seen) if (i >= 256) counts.set(i, (counts.get(i) ?? 0) + 1);
  }
  const best = [...counts].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0]?.[0] ?? 256;
  const labels = c.engine.identity(best)!.labels.filter((l) => !l.startsWith("k8s:pod="));
  return { id, labels: [...labels, `k8s:pod=newcomer-${id}`] };
}

/** Median add (upsert + the 100 endpoints' entries for it) and remove, and the entries added. */
function churn(c: Cluster, reps: number): { add: number; remove: number; entries: number } {
  const adds: number[] = [];
  const removes: number[] = [];
  let entries = 0;
  const template = selectedNewcomer(c, 0);
  for (let k = 0; k < reps; k++) {
    const id = 10_000_000 + k;
    const newcomer = { id, labels: [...template.labels.slice(0, -1), `k8s:pod=newcomer-${id}`] };
    let added = 0;
    adds.push(time(() => {
      c.engine.upsertIdentities([newcomer]);
      for (const e of c.eps) added += c.engine.mapStateForIdentity(e.id, id).entries.length;
    }));
    entries = added;
    removes.push(time(() => {
      c.engine.removeIdentities([id]);
      for (const e of c.eps) c.engine.mapStateForIdentity(e.id, id);
    }));
  }
  return { add: median(adds), remove: median(removes), entries };
}

export async function main(args: string[]): Promise<void> {
  const quick = args.includes("--quick");
  const reps = quick ? 15 : 51;
  const fullReps = quick ? 2 : 5;
  const bigReps = quick ? 1 : 3;
  const started = performance.now();
  console.log(`bench scale${quick ? " (quick)" : ""}: ${ENDPOINTS} local endpoints; medians`);
  let missed = 0;
  const miss = (ok: boolean) => ok || missed++;

  console.log("identity churn (1,000 rules)");
  const small = await cluster(10_000, 1_000);
  const s = churn(small, reps);
  small.engine.close();
  const big = await cluster(100_000, 1_000);
  const b = churn(big, reps);
  miss(report("add 1 identity + diffs, 10k identities", s.add, "ms", 10));
  miss(report(`add 1 identity + diffs, 100k identities (${b.entries} entries)`, b.add, "ms", 10));
  miss(report("  ratio 100k / 10k", b.add / s.add, "×", 2));
  miss(report("remove 1 identity + diffs, 10k identities", s.remove, "ms", 10));
  miss(report("remove 1 identity + diffs, 100k identities", b.remove, "ms", 10));
  miss(report("  ratio 100k / 10k", b.remove / s.remove, "×", 2));

  console.log("full resolution (selector cache + map-states of every endpoint)");
  const full = Array.from({ length: fullReps }, () => resolveAll(big));
  miss(
    report(
      `1,000 rules × 100k identities (${fmt(full[0]!.entries)} entries)`,
      median(full.map((f) => f.ms)),
      "ms",
      1_000,
    ),
  );
  reportCpu(full);
  big.engine.close();
  const huge = await cluster(100_000, 10_000, false);
  const many = Array.from({ length: bigReps }, () => resolveAll(huge));
  miss(
    report(
      `10,000 rules × 100k identities (${fmt(many[0]!.entries)} entries)`,
      median(many.map((f) => f.ms)),
      "ms",
      5_000,
    ),
  );
  reportCpu(many);
  console.log("memory with 10,000 rules × 100k identities resolved");
  miss(
    report(
      "RSS of the process (engine, its facade, the specs)",
      Deno.memoryUsage().rss / MIB,
      "MiB",
      1024,
    ),
  );
  console.log(
    `  WASM linear memory of the engine ${fmt(huge.engine.memoryBytes / MIB).padStart(25)} MiB`,
  );
  huge.engine.close();
  console.log(
    `${missed === 0 ? "every target met" : `${missed} target(s) MISSED`} in ${
      fmt((performance.now() - started) / 1000)
    } s`,
  );
}
