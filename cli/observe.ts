// `cilia observe`: flows from the agent's monitor (or from a saved NDJSON file with
// `--input-file`) through Hubble's filter vocabulary — `--from-pod/--to-pod/--pod NS/NAME`,
// `--from-label/--to-label/--label k=v`, `--from-ip/--to-ip/--ip`, `--verdict`, `--protocol`,
// `--port`, `--type`, `--not` before a filter to negate it — with `--since`, `--last N`,
// `--follow`, and `-o compact|table|json|jsonpb`. Lost events are always reported. Output leaves
// in large chunks; `-o json`/`jsonpb` from the agent passes its lines through unparsed (the agent
// filters, and writes the same lines this command would), read straight from the socket.

import {
  addCriterion,
  compileFilter,
  emptyFilter,
  FILTER_FIELDS,
  FilterError,
  filterToParams,
  type Flow,
  type FlowFilter,
  type MonitorLine,
  type MonitorStats,
  readLineBatches,
} from "@cilia/agent/monitor";
import { UsageError } from "./output.ts";
import { AgentClient, socketPath } from "./live_client.ts";
import { rawGet } from "./_raw_http.ts";
import { flowLine, flowTable, OBSERVE_FORMATS, type ObserveFormat } from "./flow_render.ts";

export const OBSERVE_HELP =
  `cilia observe — flows with both sides' labels, the verdict and the policy that decided

Usage: cilia observe [filters] [--since 5m|TIME] [--last N] [-f|--follow] [-o FORMAT]
       cilia observe --input-file FLOWS.json [filters]   (saved "-o json" output)

Filters (repeat a flag to OR its values; "--not" negates the next filter):
  --from-pod/--to-pod/--pod [NS/]NAME   --from-label/--to-label/--label k=v[,k2=v2]
  --from-ip/--to-ip/--ip IP|CIDR        --from-identity/--to-identity/--identity N
  --namespace NS  --verdict FORWARDED|DROPPED|AUDIT  --type drop|trace|policy-verdict
  --protocol tcp|udp|sctp|icmp|icmpv6   --port/--from-port/--to-port N  --drop-reason 133|NAME
  --service NS/NAME|NAME|FRONTEND       (flows through a service: 10.96.0.10:80/TCP, its address)
Output: -o compact (default) | table | json | jsonpb
Agent: -H/--host unix:///path (or CILIA_HOST)`;

export interface ObserveArgs {
  filter: FlowFilter;
  last?: number;
  since?: Date;
  follow: boolean;
  format: ObserveFormat;
  inputFile?: string;
  host?: string;
}

function durationAgo(text: string): Date {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text);
  if (m) {
    const unit = { ms: 1, s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[m[2]!]!;
    return new Date(Date.now() - Number(m[1]) * unit);
  }
  const d = new Date(text);
  if (Number.isNaN(d.getTime())) {
    throw new UsageError(`Invalid --since "${text}": expected a duration (30s, 5m, 1h) or a time`);
  }
  return d;
}

/** Parses observe's arguments in order (order matters for --not). */
export function parseObserveArgs(argv: string[]): ObserveArgs | "help" {
  const a: ObserveArgs = { filter: emptyFilter(), follow: false, format: "compact" };
  let negate = false;
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i]!;
    if (tok === "--help" || tok === "-h") return "help";
    if (tok === "--not") {
      negate = true;
      continue;
    }
    if (tok === "-f" || tok === "--follow") {
      a.follow = true;
      continue;
    }
    const eq = tok.indexOf("=");
    const name = tok.startsWith("--") ? tok.slice(2, eq >= 0 ? eq : undefined) : tok;
    const value = () => {
      if (eq >= 0) return tok.slice(eq + 1);
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`Missing value for ${tok}`);
      return v;
    };
    if (tok === "-o" || name === "output") {
      const f = value();
      if (!(OBSERVE_FORMATS as readonly string[]).includes(f)) {
        throw new UsageError(
          `Invalid output format "${f}": expected one of ${OBSERVE_FORMATS.join(", ")}`,
        );
      }
      a.format = f as ObserveFormat;
    } else if (tok === "-H" || name === "host") a.host = value();
    else if (name === "last") {
      const v = value();
      if (!/^\d+$/.test(v)) throw new UsageError(`Invalid --last "${v}": expected a count`);
      a.last = Number(v);
    } else if (name === "since") a.since = durationAgo(value());
    else if (name === "input-file") a.inputFile = value();
    else if (tok.startsWith("--") && (FILTER_FIELDS as readonly string[]).includes(name)) {
      try {
        addCriterion(a.filter, name, value(), negate);
      } catch (err) {
        if (err instanceof FilterError) throw new UsageError(err.message);
        throw err;
      }
      negate = false;
    } else {
      throw new UsageError(
        `Unknown observe flag "${tok}": filters are ${
          FILTER_FIELDS.map((f) => `--${f}`).join(", ")
        }`,
      );
    }
  }
  if (negate) throw new UsageError(`--not must come before a filter, e.g. --not --verdict DROPPED`);
  if (a.inputFile && a.follow) throw new UsageError("--follow cannot read an --input-file");
  return a;
}

function lostNote(s: MonitorStats): string | undefined {
  if (s.lost.total === 0) return undefined;
  return `${s.lost.total} event(s) lost (kernel ring ${s.lost.perf}, slow readers ` +
    `${s.lost.slowReaders}); flow buffer ${s.buffer.size}/${s.buffer.capacity}`;
}

/**
 * Writes all of `bytes` to stdout (a pipe may take less per write). Synchronous on purpose: an
 * async stdout write hands every chunk to a helper thread and back, about 4× the CPU of writing
 * in place, and this command has nothing else to do while its reader catches up (the socket
 * keeps filling meanwhile).
 */
function writeAll(bytes: Uint8Array): void {
  for (let at = 0; at < bytes.length;) at += Deno.stdout.writeSync(bytes.subarray(at));
}

const FLUSH_AT = 1 << 16;

class Printer {
  readonly #rows: Flow[] = [];
  readonly #enc = new TextEncoder();
  #out = "";
  constructor(readonly format: ObserveFormat, readonly streaming: boolean) {}

  get json(): boolean {
    return this.format === "json" || this.format === "jsonpb";
  }

  flow(f: Flow): void {
    if (this.format === "table" && !this.streaming) this.#rows.push(f);
    else this.#out += flowLine(f, this.format) + "\n";
  }

  lost(source: string, count: number): void {
    if (this.json) {
      this.#out += JSON.stringify({ lost_events: { source, num_events_lost: count } }) + "\n";
    } else this.#out += `EVENTS LOST: ${source} ${count}\n`;
  }

  /** Writes what is buffered once it is large (or always, with force). */
  flush(force = false): void {
    if (this.#out.length === 0 || (!force && this.#out.length < FLUSH_AT)) return;
    const text = this.#out;
    this.#out = "";
    writeAll(this.#enc.encode(text));
  }

  end(): void {
    this.flush(true);
    if (this.#rows.length > 0) console.log(flowTable(this.#rows));
  }
}

function handle(line: string, p: Printer, onStats: (s: MonitorStats) => void): void {
  const m = JSON.parse(line) as MonitorLine;
  if ("flow" in m) p.flow(m.flow);
  else if ("lost_events" in m) p.lost(m.lost_events.source, m.lost_events.num_events_lost);
  else if ("stats" in m) onStats(m.stats);
}

const NL = 0x0a;
const STATS_PREFIX = new TextEncoder().encode('{"stats"');

function startsWithAt(bytes: Uint8Array, at: number, prefix: Uint8Array): boolean {
  if (at + prefix.length > bytes.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[at + i] !== prefix[i]) return false;
  return true;
}

/**
 * `-o json` from the agent: its lines are what this command would print, so whole lines go to
 * stdout as they came, in the pieces they came in; only the closing `{"stats"}` line (the last
 * line of a response that has one) is read. Nothing is looked at per line.
 */
class PassThrough {
  #carry: Uint8Array = new Uint8Array(0);
  readonly #dec = new TextDecoder();
  constructor(readonly onStats: (s: MonitorStats) => void) {}

  /** One piece of the body (it may be reused once this returns). */
  push(chunk: Uint8Array): void {
    const end = chunk.lastIndexOf(NL) + 1;
    if (end === 0) {
      this.#carry = concat(this.#carry, chunk.slice());
      return;
    }
    // The last complete line starts after the newline before it (or in carry).
    const before = end >= 2 ? chunk.lastIndexOf(NL, end - 2) : -1;
    const lastLine = before >= 0
      ? chunk.subarray(before + 1, end)
      : concat(this.#carry, chunk.subarray(0, end));
    if (startsWithAt(lastLine, 0, STATS_PREFIX)) {
      if (before >= 0) {
        if (this.#carry.length > 0) writeAll(this.#carry);
        writeAll(chunk.subarray(0, before + 1));
      }
      this.onStats((JSON.parse(this.#dec.decode(lastLine)) as { stats: MonitorStats }).stats);
    } else {
      if (this.#carry.length > 0) writeAll(this.#carry);
      writeAll(chunk.subarray(0, end));
    }
    this.#carry = chunk.slice(end);
  }

  end(): void {
    const carry = this.#carry;
    this.#carry = new Uint8Array(0);
    if (carry.length > 0 && startsWithAt(carry, 0, STATS_PREFIX)) {
      this.onStats((JSON.parse(this.#dec.decode(carry)) as { stats: MonitorStats }).stats);
    } else if (carry.length > 0) writeAll(carry);
  }
}

/**
 * `-o json` straight from the agent's socket (cli/_raw_http.ts: large reads, no stream objects);
 * false, with nothing written, when that does not work (an error answer, no agent): the caller
 * then asks through fetch, which reports it.
 */
async function rawJson(
  path: string,
  query: URLSearchParams,
  pt: PassThrough,
  signal: AbortSignal,
): Promise<boolean> {
  let started = false;
  try {
    await rawGet({ path }, `/v1/flows?${query}`, (b) => {
      started = true;
      pt.push(b);
      return Promise.resolve();
    }, signal);
  } catch (err) {
    if (started) throw err;
    return false;
  }
  pt.end();
  return true;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

async function fromFile(a: ObserveArgs, p: Printer): Promise<number> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(a.inputFile!);
  } catch (err) {
    throw new Error(`Cannot read "${a.inputFile}": ${(err as Error).message}`);
  }
  const match = compileFilter(a.filter);
  const since = a.since?.toISOString();
  const flows: Flow[] = [];
  let n = 0;
  for await (const lines of readLineBatches(file.readable)) {
    for (const line of lines) {
      n++;
      let v: { flow?: Flow };
      try {
        v = JSON.parse(line);
      } catch {
        throw new Error(`Cannot read "${a.inputFile}" line ${n}: not JSON`);
      }
      const f = v.flow;
      if (f && (!since || f.time >= since) && match(f)) flows.push(f);
    }
  }
  for (const f of a.last !== undefined ? flows.slice(-a.last) : flows) {
    p.flow(f);
    p.flush();
  }
  p.end();
  return 0;
}

export async function observe(argv: string[]): Promise<number> {
  const a = parseObserveArgs(argv);
  if (a === "help") {
    console.log(OBSERVE_HELP);
    return 0;
  }
  const p = new Printer(a.format, a.follow);
  if (a.inputFile) return await fromFile(a, p);
  const api = new AgentClient(socketPath(a.host));
  const ac = new AbortController();
  // Ctrl-C ends the stream; a response that does not notice the abort must not hold the exit.
  const stop = () => {
    ac.abort();
    setTimeout(() => Deno.exit(0), 300);
  };
  if (a.follow) Deno.addSignalListener("SIGINT", stop);
  let stats: MonitorStats | undefined;
  try {
    const q = filterToParams(a.filter);
    if (a.last !== undefined) q.set("last", String(a.last));
    if (a.since) q.set("since", a.since.toISOString());
    if (a.follow) q.set("follow", "true");
    const onStats = (s: MonitorStats) => stats = s;
    const pt = new PassThrough(onStats);
    if (p.json && await rawJson(socketPath(a.host), q, pt, ac.signal)) {
      p.end();
      const note = stats && lostNote(stats);
      if (note) console.error(`cilia observe: ${note}`);
      return 0;
    }
    const body = await api.stream("/v1/flows", q, ac.signal);
    try {
      if (p.json) {
        for await (const chunk of body) pt.push(chunk);
        pt.end();
      } else {
        for await (const lines of readLineBatches(body)) {
          for (const line of lines) handle(line, p, onStats);
          p.flush(true);
        }
      }
    } catch (err) {
      if (!ac.signal.aborted) throw err;
    }
    p.end();
    const note = stats && lostNote(stats);
    if (note) console.error(`cilia observe: ${note}`);
    return 0;
  } finally {
    if (a.follow) Deno.removeSignalListener("SIGINT", stop);
    api.close();
  }
}
