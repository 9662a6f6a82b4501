// `deno task bench import [--rules N] [--per-doc N] [--endpoints N]`: does a big policy import
// stall the agent? An agent (`bin/cilia-agent --datapath none`, Deno KV) with a few endpoints
// gets N rules (default 10,000) in one PUT /v1/policy of several CiliumNetworkPolicy documents,
// each under Deno KV's 64 KiB value limit and all under the API's 1 MiB body limit, while
// /v1/status is polled every 50 ms. Prints the import's time and the status latency (max, p99)
// during it next to the same polling while idle. Progress goes to stderr.

import { parseArgs } from "node:util";
import { spawnAgent } from "../../tests/agent/_fixture.ts";
import { percentile } from "./cni_bench.ts";

export interface ImportFigures {
  rules: number;
  documents: number;
  bodyBytes: number;
  importMs: number;
  idle: { maxMs: number; p99Ms: number; samples: number };
  during: { maxMs: number; p99Ms: number; samples: number };
}

const progress = (msg: string) => console.error(`bench import: ${msg}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `rules` ingress rules over documents of `perDoc` rules, as one YAML stream. */
export function bigPolicy(rules: number, perDoc: number): { text: string; documents: number } {
  const docs: string[] = [];
  for (let d = 0; d * perDoc < rules; d++) {
    const lines = [
      "apiVersion: cilium.io/v2",
      "kind: CiliumNetworkPolicy",
      `metadata: {name: big-${d}, namespace: default}`,
      "spec:",
      `  endpointSelector: {matchLabels: {app: svc-${d % 4}}}`,
      "  ingress:",
    ];
    for (let i = d * perDoc; i < Math.min(rules, (d + 1) * perDoc); i++) {
      lines.push(
        `  - {fromEndpoints: [{matchLabels: {app: c${i % 50}}}], ` +
          `toPorts: [{ports: [{port: "${1024 + i % 30000}"}]}]}`,
      );
    }
    docs.push(lines.join("\n"));
  }
  return { text: docs.join("\n---\n") + "\n", documents: docs.length };
}

/** Polls GET /v1/status every `everyMs` until `stop` resolves; returns the latencies. */
async function poll(
  call: () => Promise<unknown>,
  stop: Promise<unknown>,
  everyMs = 50,
): Promise<number[]> {
  let done = false;
  stop.finally(() => done = true).catch(() => {});
  const out: number[] = [];
  while (!done) {
    const t = performance.now();
    await call();
    out.push(performance.now() - t);
    await sleep(everyMs);
  }
  return out;
}

const stats = (xs: number[]) => ({
  maxMs: Math.max(...xs),
  p99Ms: percentile(xs, 0.99),
  samples: xs.length,
});

export async function measureImport(
  o: { rules: number; perDoc: number; endpoints: number },
): Promise<ImportFigures> {
  const agent = await spawnAgent({ node: "bench-import" });
  try {
    const api = agent.api;
    for (let i = 0; i < o.endpoints; i++) {
      const r = await api.call("PUT", `/v1/endpoint/${i + 1}`, {
        name: `bench-${i}`,
        labels: { app: i % 2 ? `svc-${i % 4}` : `c${i % 50}` },
        ipv4: `10.77.0.${i + 10}`,
      });
      if (r.status >= 300) throw new Error(`Cannot create an endpoint: ${JSON.stringify(r.body)}`);
    }
    const status = () => api.call("GET", "/v1/status");
    progress("idle status latency");
    const idle = await poll(status, sleep(2000));
    const { text, documents } = bigPolicy(o.rules, o.perDoc);
    const bodyBytes = new TextEncoder().encode(text).length;
    progress(`importing ${o.rules} rules in ${documents} documents (${bodyBytes} bytes)`);
    const started = performance.now();
    const put = api.call("PUT", "/v1/policy", text);
    const during = await poll(status, put);
    const r = await put;
    const importMs = performance.now() - started;
    if (r.status !== 200) throw new Error(`The import failed: ${JSON.stringify(r.body)}`);
    return {
      rules: o.rules,
      documents,
      bodyBytes,
      importMs,
      idle: stats(idle),
      during: stats(during),
    };
  } catch (err) {
    console.error(agent.log());
    throw err;
  } finally {
    await agent.stop();
  }
}

export function report(f: ImportFigures): string {
  const ms = (x: number) => `${x.toFixed(1)} ms`.padStart(10);
  return [
    `Policy import: ${f.rules} rules in ${f.documents} documents (${f.bodyBytes} bytes), ` +
    `one PUT /v1/policy, took ${(f.importMs / 1000).toFixed(2)} s`,
    `GET /v1/status every 50 ms     max ${"".padStart(0)}   p99         samples`,
    `  idle                  ${ms(f.idle.maxMs)} ${ms(f.idle.p99Ms)}   ${f.idle.samples}`,
    `  during the import     ${ms(f.during.maxMs)} ${ms(f.during.p99Ms)}   ${f.during.samples}`,
  ].join("\n");
}

export async function main(args: string[]): Promise<void> {
  const flags = parseArgs({
    args,
    options: {
      rules: { type: "string", default: "10000" },
      "per-doc": { type: "string", default: "400" },
      endpoints: { type: "string", default: "8" },
    },
  });
  const num = (name: "rules" | "per-doc" | "endpoints") => {
    const n = Number(flags.values[name]);
    if (!Number.isInteger(n) || n < 1) {
      throw new RangeError(`Invalid --${name} "${flags.values[name]}": expected a whole number`);
    }
    return n;
  };
  const o = { rules: num("rules"), perDoc: num("per-doc"), endpoints: num("endpoints") };
  console.log(report(await measureImport(o)));
}

if (import.meta.main) await main(Deno.args);
