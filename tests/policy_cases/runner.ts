// The one runner of cilia's policy conformance corpus: lists the scenario files of this folder and
// checks every consumer of the engine (the WASM engine, the CLI, the browser, the kernel datapath)
// against the same expectations, one `Deno.test` per consumer and one step per file (Hono's shared
// router test pattern). Expectations are read here from the YAML, never from a consumer, so a
// consumer cannot grade itself. It must not know how any consumer evaluates a query. A consumer
// may run a few files ahead of their steps (`concurrency`) or batch them (`prepare`); each file
// is still its own step, checked against its own expectations. A file a consumer cannot run is
// an ignored step whose name says why (never a green step that ran nothing); a consumer the
// machine cannot run (no root, no Chromium) is an ignored test.

import { parse } from "yaml";
import { type Needs, needs, skipStep } from "../helpers/root.ts";

/** audited: the packet passes, and an audit-mode policy reports that it would have dropped it. */
export type Verdict = "allowed" | "denied" | "audited";

export interface ConsumerResult {
  /** One verdict per query, in file order. */
  verdicts: Verdict[];
  /** Optional explanation lines per query (the engine's trace), shown on a mismatch. */
  traces?: string[][];
}

export interface Consumer {
  name: string;
  /** Set for consumers that send real packets: files not tagged `# kernel: yes` are skipped. */
  kernelOnly?: boolean;
  /** What the machine must offer; without it the consumer's test is ignored, saying why. */
  needs?: Needs;
  /** Why this consumer cannot run a file, decided before its step (which is then ignored). */
  skip?(c: PolicyCase): Promise<string | undefined>;
  run(file: string, text: string): Promise<ConsumerResult>;
  /**
   * How many run() calls may be in flight at once (default 1: each file runs inside its own
   * step). Above 1, files are started ahead of their steps in corpus order, at most this many at
   * a time, and each step still checks its own file's verdicts.
   */
  concurrency?: number;
  /** Told, before the first run(), which files will run (a consumer may batch them). */
  prepare?(cases: readonly PolicyCase[]): void;
  /** Releases what run() set up (a browser, a lab); called once after the last file. */
  close?(): Promise<void>;
}

export interface PolicyCase {
  /** File name relative to this folder, e.g. `default-deny-direction.yaml`. */
  file: string;
  text: string;
  /** True when the file says `# kernel: yes` (expressible as real packets). */
  kernel: boolean;
  /** Why not, from `# kernel: no — <reason>`. */
  kernelReason?: string;
}

interface Expectation {
  name: string;
  expect: Verdict;
}

const CASES_DIR = new URL("./", import.meta.url);

/** Every `*.yaml` case of the corpus, sorted by file name. */
export async function listCases(): Promise<PolicyCase[]> {
  const out: PolicyCase[] = [];
  for await (const entry of Deno.readDir(CASES_DIR)) {
    if (!entry.isFile || !/\.ya?ml$/.test(entry.name)) continue;
    const text = await Deno.readTextFile(new URL(entry.name, CASES_DIR));
    out.push({ file: entry.name, text, ...kernelTag(entry.name, text) });
  }
  return out.sort((a, b) => a.file.localeCompare(b.file));
}

function kernelTag(file: string, text: string): { kernel: boolean; kernelReason?: string } {
  const tag = text.match(/^# kernel: (yes|no)\b(?:\s*—\s*(.*))?$/m);
  if (!tag) throw new SyntaxError(`Case "${file}" has no "# kernel: yes|no" line`);
  if (tag[1] === "yes") return { kernel: true };
  return { kernel: false, kernelReason: tag[2] ?? "not expressible as packets" };
}

function peerText(p: unknown): string {
  if (typeof p === "string") return p;
  if (p && typeof p === "object") {
    const [k, v] = Object.entries(p)[0] ?? ["?", "?"];
    return k === "endpoint" || k === "cidr" ? String(v) : `${k}:${String(v)}`;
  }
  return "?";
}

function expectations(file: string, text: string): Expectation[] {
  const doc = parse(text) as { queries?: Record<string, unknown>[] } | null;
  const queries = doc?.queries;
  if (!Array.isArray(queries) || queries.length === 0) {
    throw new SyntaxError(`Case "${file}" has no queries`);
  }
  return queries.map((q, i) => {
    const expect = q.expect;
    if (expect !== "allowed" && expect !== "denied" && expect !== "audited") {
      throw new SyntaxError(`Case "${file}" queries[${i}] has no expect: allowed|denied|audited`);
    }
    const name = typeof q.name === "string"
      ? q.name
      : `${peerText(q.from)} -> ${peerText(q.to)} ${String(q.protocol ?? "TCP")}/${
        String(q.port ?? 0)
      }`;
    return { name, expect };
  });
}

interface Mismatch {
  i: number;
  e: Expectation;
  got: Verdict;
  trace: string[] | undefined;
}

function mismatchReport(
  where: { consumer: string; file: string; total: number },
  wrong: Mismatch[],
): string {
  const { consumer, file, total } = where;
  const lines = [`${consumer}: ${wrong.length} of ${total} queries differ in "${file}":`];
  for (const w of wrong) {
    lines.push(`  queries[${w.i}] "${w.e.name}"`);
    lines.push(`    expected: ${w.e.expect}`);
    lines.push(`    got:      ${w.got}`);
    for (const t of w.trace ?? []) lines.push(`      | ${t}`);
  }
  return lines.join("\n");
}

/** Why `consumer` does not run file `c`, or undefined when it does. */
export async function skipReason(consumer: Consumer, c: PolicyCase): Promise<string | undefined> {
  if (consumer.kernelOnly && !c.kernel) return `kernel: no — ${c.kernelReason}`;
  return await consumer.skip?.(c);
}

/**
 * Checks one consumer's verdicts for one file; throws a readable diff on mismatch. `result`: the
 * consumer's answer when it was started ahead (default: run() now).
 */
export async function checkCase(
  consumer: Consumer,
  c: PolicyCase,
  result?: Promise<ConsumerResult>,
): Promise<void> {
  const want = expectations(c.file, c.text);
  const got = await (result ?? consumer.run(c.file, c.text));
  if (got.verdicts.length !== want.length) {
    throw new Error(
      `${consumer.name}: expected ${want.length} verdicts for "${c.file}", got ${got.verdicts.length}`,
    );
  }
  const wrong = want.flatMap((e, i): Mismatch[] => {
    const v = got.verdicts[i]!;
    return v === e.expect ? [] : [{ i, e, got: v, trace: got.traces?.[i] }];
  });
  if (wrong.length > 0) {
    throw new Error(
      mismatchReport({ consumer: consumer.name, file: c.file, total: want.length }, wrong),
    );
  }
}

/** Registers one test for the consumer with one step per case file. */
export function conformanceTest(consumer: Consumer): void {
  Deno.test({
    name: `policy conformance: ${consumer.name}`,
    ...needs(consumer.needs ?? {}),
    async fn(t) {
      const started: Promise<unknown>[] = [];
      try {
        const cases: { c: PolicyCase; skip: string | undefined }[] = [];
        for (const c of await listCases()) cases.push({ c, skip: await skipReason(consumer, c) });
        const toRun = cases.flatMap((x) => x.skip === undefined ? [x.c] : []);
        consumer.prepare?.(toRun);
        const ahead = (consumer.concurrency ?? 1) > 1
          ? startAhead(consumer, toRun, started)
          : undefined;
        for (const { c, skip } of cases) {
          if (skip !== undefined) await skipStep(t, c.file, skip);
          // A run started ahead began outside this step: the step cannot own its async ops.
          else if (ahead) {
            await t.step({
              name: c.file,
              sanitizeOps: false,
              sanitizeResources: false,
              fn: () => checkCase(consumer, c, ahead.get(c)),
            });
          } else await t.step(c.file, () => checkCase(consumer, c));
        }
        if (toRun.length === 0) throw new Error(`${consumer.name}: not one case of the corpus ran`);
      } finally {
        await Promise.allSettled(started);
        await consumer.close?.();
      }
    },
  });
}

/**
 * Starts consumer.run() for every case in order, at most `consumer.concurrency` at a time; each
 * promise is handled (its step awaits it later) and also pushed to `started`.
 */
function startAhead(
  consumer: Consumer,
  cases: readonly PolicyCase[],
  started: Promise<unknown>[],
): Map<PolicyCase, Promise<ConsumerResult>> {
  const out = new Map<PolicyCase, Promise<ConsumerResult>>();
  const slots: Promise<unknown>[] = [];
  const limit = consumer.concurrency ?? 1;
  for (const [i, c] of cases.entries()) {
    const free = i < limit ? Promise.resolve() : slots[i - limit]!;
    const p = free.then(() => consumer.run(c.file, c.text));
    const settled = p.then(() => {}, () => {});
    slots.push(settled);
    started.push(settled);
    out.set(c, p);
  }
  return out;
}
