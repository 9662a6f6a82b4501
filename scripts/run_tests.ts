// `deno task test`: the suite as several `deno test` processes at once, one per test file. Most
// files mostly wait (agent starts, process spawns, timeouts), so on CI's 2 cores running a few
// at a time halves the wall time. Every file keeps its own process, `--trace-leaks` and sanitizers,
// exactly as `deno test -A --trace-leaks <file>`. The whole set is type-checked once first
// (children then run with --no-check: a check per process would redo tsc for each graph).
// Files in EXCLUSIVE run afterwards with nothing else running: they measure or time something
// that a second job would disturb. Files are started longest first (tests/durations.json, written
// by `--write-durations`) so that one long file does not start last. It prints a line per finished
// file, the failing files' test output, a summary, and exits 1 when any file failed.
//
// Usage: deno run -A scripts/run_tests.ts [--jobs N] [--write-durations] [FILE|DIR…]
//   (default tests/; --jobs or CILIA_TEST_JOBS, default 3; --jobs 1 runs one file at a time)
import { parseArgs } from "node:util";

const root = new URL("../", import.meta.url).pathname;
const DURATIONS = `${root}tests/durations.json`;
const TEST_FILE = /(^|[_.])test\.(ts|tsx|mts|js|mjs|jsx)$/; // deno test's own pattern
const COLOR = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, "g"); // deno colours even a pipe

/** Files that run alone, after the rest, and why. */
const EXCLUSIVE: Record<string, string> = {
  "tests/service/lb_bench_test.ts": "wrk/haproxy rounds: needs the CPUs to itself",
  "tests/web/reachability_test.ts": "times Fast 3G time to interactive against 3 s",
  "tests/fuzz/policy_parser_test.ts": "bounds compilePolicies() of 10k documents to 1 s",
};

interface Outcome {
  file: string;
  code: number;
  seconds: number;
  stdout: string;
  stderr: string;
}

async function walk(dir: string, into: Set<string>): Promise<void> {
  for await (const e of Deno.readDir(dir)) {
    const path = `${dir.replace(/\/$/, "")}/${e.name}`;
    if (e.isDirectory && e.name !== "node_modules") await walk(path, into);
    else if (e.isFile && TEST_FILE.test(e.name)) into.add(path);
  }
}

/** The test files under paths (files or directories), relative to the repository root. */
async function discover(paths: string[]): Promise<string[]> {
  const files = new Set<string>();
  for (const p of paths) {
    const abs = p.startsWith("/") ? p : `${Deno.cwd()}/${p}`;
    if ((await Deno.stat(abs)).isFile) files.add(abs);
    else await walk(abs, files);
  }
  return [...files].map((f) => f.startsWith(root) ? f.slice(root.length) : f).sort();
}

async function durations(): Promise<Record<string, number>> {
  return JSON.parse(await Deno.readTextFile(DURATIONS).catch(() => "{}"));
}

const children = new Set<Deno.ChildProcess>();

async function deno(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: root,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  children.add(child);
  try {
    const o = await child.output();
    const dec = new TextDecoder();
    const text = (b: Uint8Array) => dec.decode(b).replace(COLOR, "");
    return { code: o.code, stdout: text(o.stdout), stderr: text(o.stderr) };
  } finally {
    children.delete(child);
  }
}

async function runFile(file: string): Promise<Outcome> {
  const started = performance.now();
  const r = await deno(["test", "-A", "--trace-leaks", "--no-check", file]);
  return { file, ...r, seconds: (performance.now() - started) / 1000 };
}

/** deno test's last line: "ok | 3 passed (5 steps) | 0 failed | 1 ignored (2s)". */
function counts(out: string): Record<string, number> {
  const line = out.split("\n").reverse().find((l) => /^(ok|FAILED) \| /.test(l)) ?? "";
  const c: Record<string, number> = { passed: 0, failed: 0, ignored: 0, steps: 0 };
  for (const m of line.matchAll(/(\d+) (passed|failed|ignored)(?: \((\d+) steps?\))?/g)) {
    c[m[2]!]! += Number(m[1]);
    c.steps! += Number(m[3] ?? 0);
  }
  return c;
}

/** What to show of a failed file: deno's ERRORS and FAILURES sections, and its stderr. */
function failureText(o: Outcome): string {
  const at = o.stdout.search(/^ ERRORS $/m);
  // No ERRORS section: the file did not load or crashed; the end of its output says why.
  const body = at >= 0 ? o.stdout.slice(at) : o.stdout.split("\n").slice(-150).join("\n");
  // deno's own trailer for a failed run ("error: Test failed" and an empty backtrace) says nothing.
  const err = o.stderr.replace(/^error: Test failed\n\nStack backtrace:\n(\s+\d+: .*\n?)*/m, "")
    .trim();
  const tail = err ? `\n--- stderr ---\n${err.split("\n").slice(-80).join("\n")}` : "";
  return body.trimEnd() + tail;
}

function report(o: Outcome, done: number, total: number): void {
  const c = counts(o.stdout);
  const what = [
    `${c.passed} passed`,
    c.failed ? `${c.failed} failed` : "",
    c.ignored ? `${c.ignored} ignored` : "",
  ]
    .filter(Boolean).join(", ");
  const n = String(done).padStart(String(total).length);
  console.log(
    `[${n}/${total}] ${o.code === 0 ? "ok    " : "FAILED"} ${
      o.seconds.toFixed(1).padStart(6)
    }s  ${o.file} (${what})`,
  );
  for (
    const l of new Set(o.stdout.split("\n").filter((l) => l.startsWith("ignored here:")))
  ) {
    console.log(`           ${l}`);
  }
  if (o.code !== 0) console.log(`\n${failureText(o)}\n`);
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    options: { jobs: { type: "string" }, "write-durations": { type: "boolean" } },
    allowPositionals: true,
  });
  const jobs = Number(values.jobs ?? Deno.env.get("CILIA_TEST_JOBS") ?? 3);
  if (!Number.isInteger(jobs) || jobs < 1) throw new RangeError(`Invalid --jobs "${values.jobs}"`);
  const files = await discover(positionals.length > 0 ? positionals : ["tests/"]);
  if (files.length === 0) throw new Error(`No test files in "${positionals.join(" ")}"`);
  const started = performance.now();

  const check = await deno(["test", "--no-run", ...files]);
  if (check.code !== 0) {
    console.log(check.stdout + check.stderr);
    console.log(`type check of ${files.length} test files FAILED`);
    return 1;
  }
  const secs = () => ((performance.now() - started) / 1000).toFixed(1);
  console.log(`type check of ${files.length} test files: ok (${secs()}s)`);

  const known = await durations();
  const weight = (f: string) => known[f] ?? 10;
  const shared = files.filter((f) => !(f in EXCLUSIVE)).sort((a, b) => weight(b) - weight(a));
  const alone = files.filter((f) => f in EXCLUSIVE);
  console.log(
    `running ${files.length} files, ${Math.min(jobs, shared.length)} at a time` +
      (alone.length ? `, then ${alone.length} alone (${alone.join(", ")})` : ""),
  );
  const outcomes: Outcome[] = [];
  const finish = (o: Outcome) => (outcomes.push(o), report(o, outcomes.length, files.length));
  const queue = [...shared];
  await Promise.all(Array.from({ length: jobs }, async () => {
    for (let f = queue.shift(); f !== undefined; f = queue.shift()) finish(await runFile(f));
  }));
  for (const f of alone) finish(await runFile(f));

  const total: Record<string, number> = { passed: 0, failed: 0, ignored: 0, steps: 0 };
  for (const o of outcomes) for (const [k, v] of Object.entries(counts(o.stdout))) total[k]! += v;
  const failed = outcomes.filter((o) => o.code !== 0);
  if (values["write-durations"]) {
    const d = Object.fromEntries(
      outcomes.map((o) => [o.file, Number(o.seconds.toFixed(1))] as const)
        .sort((a, b) => b[1] - a[1]),
    );
    const exists = (f: string) => {
      try {
        return Deno.statSync(`${root}${f}`).isFile;
      } catch {
        return false; // a file that is gone keeps no entry
      }
    };
    const all = Object.entries({ ...known, ...d }).filter(([f]) => exists(f))
      .sort((a, b) => b[1] - a[1]);
    await Deno.writeTextFile(DURATIONS, JSON.stringify(Object.fromEntries(all), null, 2) + "\n");
  }
  console.log(
    `\n${failed.length ? "FAILED" : "ok"} | ${
      outcomes.length - failed.length
    } of ${outcomes.length} files ok | ` +
      `${total.passed} passed (${total.steps} steps) | ${total.failed} failed | ${total.ignored} ignored | ` +
      `${secs()}s with ${jobs} jobs`,
  );
  for (const o of failed) console.log(`FAILED ${o.file} (exit ${o.code})`);
  return failed.length ? 1 : 0;
}

// Each child cleans up its own labs on the signal (their `finally` blocks); the runner only passes
// it on and exits as a shell would.
for (const [sig, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
  Deno.addSignalListener(sig, () => {
    for (const c of children) c.kill(sig);
    Deno.exit(code);
  });
}
Deno.exit(await main());
