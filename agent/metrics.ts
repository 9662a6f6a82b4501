/**
 * The agent's metrics in Prometheus text exposition format: counters with labels, gauges read
 * on scrape, and `serveMetrics()`, the optional HTTP endpoint (`--metrics-addr`) that serves
 * `/metrics`. Metric names are `cilia_*`. This module knows no agent internals.
 */

import type { Logger } from "./log.ts";

type Labels = Record<string, string | number>;

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) =>
    `${k}="${String(v).replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n")}"`
  );
  return parts.length > 0 ? `{${parts.join(",")}}` : "";
}

export class Counter {
  #values = new Map<string, number>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: "counter" | "gauge" = "counter",
  ) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + by);
  }

  /** An incrementer for fixed labels, their text made once (for per-request hot paths). */
  bound(labels: Labels): (by?: number) => void {
    const key = labelText(labels);
    return (by = 1) => {
      this.#values.set(key, (this.#values.get(key) ?? 0) + by);
    };
  }

  /** Sets the value (for counters kept elsewhere, e.g. by the kernel, read on scrape). */
  set(labels: Labels, value: number): void {
    this.#values.set(labelText(labels), value);
  }

  /** The value for exactly these labels (tests). */
  value(labels: Labels = {}): number {
    return this.#values.get(labelText(labels)) ?? 0;
  }

  render(): string[] {
    const out = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} ${this.type}`];
    if (this.#values.size === 0 && !this.name.includes("{")) out.push(`${this.name} 0`);
    for (const [k, v] of this.#values) out.push(`${this.name}${k} ${v}`);
    return out;
  }
}

/** A histogram with fixed buckets (upper bounds, seconds or whatever the name says). */
export class Histogram {
  readonly #counts: number[];
  #sum = 0;
  #count = 0;
  constructor(readonly name: string, readonly help: string, readonly buckets: readonly number[]) {
    this.#counts = buckets.map(() => 0);
  }

  observe(value: number): void {
    this.#sum += value;
    this.#count++;
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) this.#counts[i]!++;
  }

  /**
   * Observations counted elsewhere: `perBucket[i]` values fell in bucket i alone (above bucket
   * i-1's bound, at most bucket i's), `perBucket[buckets.length]` above the last bound; `sum` is
   * their total.
   */
  add(perBucket: ArrayLike<number>, sum: number): void {
    if (perBucket.length !== this.buckets.length + 1) {
      throw new RangeError(
        `Invalid bucket counts for "${this.name}": expected ${this.buckets.length + 1}, ` +
          `got ${perBucket.length}`,
      );
    }
    let below = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      below += perBucket[i]!;
      this.#counts[i]! += below;
    }
    this.#count += below + perBucket[this.buckets.length]!;
    this.#sum += sum;
  }

  get count(): number {
    return this.#count;
  }

  render(): string[] {
    const out = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    this.buckets.forEach((b, i) => out.push(`${this.name}_bucket{le="${b}"} ${this.#counts[i]}`));
    out.push(`${this.name}_bucket{le="+Inf"} ${this.#count}`);
    out.push(`${this.name}_sum ${this.#sum}`, `${this.name}_count ${this.#count}`);
    return out;
  }
}

export class Metrics {
  #counters: (Counter | Histogram)[] = [];
  #gauges: { name: string; help: string; read: () => number }[] = [];
  #hooks: (() => Promise<void> | void)[] = [];

  counter(name: string, help: string): Counter {
    const c = new Counter(name, help);
    this.#counters.push(c);
    return c;
  }

  gauge(name: string, help: string, read: () => number): void {
    this.#gauges.push({ name, help, read });
  }

  histogram(name: string, help: string, buckets: readonly number[]): Histogram {
    const h = new Histogram(name, help, buckets);
    this.#counters.push(h);
    return h;
  }

  /** A gauge with labels, set by the caller (usually in an onScrape hook). */
  labeledGauge(name: string, help: string): Counter {
    const g = new Counter(name, help, "gauge");
    this.#counters.push(g);
    return g;
  }

  /** Runs before every scrape (refreshes values read from elsewhere); failures are skipped. */
  onScrape(hook: () => Promise<void> | void): void {
    this.#hooks.push(hook);
  }

  /** Refreshes (onScrape hooks) and renders. */
  async scrape(): Promise<string> {
    for (const h of this.#hooks) {
      try {
        await h();
      } catch {
        // a hook that fails leaves the previous values
      }
    }
    return this.render();
  }

  render(): string {
    const lines: string[] = [];
    for (const g of this.#gauges) {
      let v: number;
      try {
        v = g.read();
      } catch {
        v = NaN;
      }
      lines.push(`# HELP ${g.name} ${g.help}`, `# TYPE ${g.name} gauge`, `${g.name} ${v}`);
    }
    for (const c of this.#counters) lines.push(...c.render());
    return lines.join("\n") + "\n";
  }
}

/** The counters every part of the agent increments. */
export interface AgentCounters {
  kvstoreOps: Counter;
  apiRequests: Counter;
  policyImportErrors: Counter;
  regenerations: Counter;
}

export function agentCounters(m: Metrics): AgentCounters {
  return {
    kvstoreOps: m.counter(
      "cilia_kvstore_operations_total",
      "kvstore operations by backend, operation and outcome",
    ),
    apiRequests: m.counter("cilia_api_requests_total", "API requests by route and status code"),
    policyImportErrors: m.counter(
      "cilia_policy_import_errors_total",
      "policy imports rejected (invalid documents or engine load failures)",
    ),
    regenerations: m.counter(
      "cilia_endpoint_regenerations_total",
      "endpoint map-state computations by kind (full or incremental)",
    ),
  };
}

export interface MetricsServer {
  readonly addr: string;
  close(): Promise<void>;
}

/** Serves `GET /metrics` on `host:port`; port 0 picks a free one (see `addr`). */
export function serveMetrics(metrics: Metrics, hostPort: string, log: Logger): MetricsServer {
  const colon = hostPort.lastIndexOf(":");
  const hostname = hostPort.slice(0, colon).replace(/^\[|\]$/g, "") || "0.0.0.0";
  const port = Number(hostPort.slice(colon + 1));
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({ hostname, port, onListen() {} }, async (req) => {
      const url = new URL(req.url);
      if (url.pathname !== "/metrics") return new Response("not found\n", { status: 404 });
      return new Response(await metrics.scrape(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    });
  } catch (err) {
    throw new Error(`Cannot serve metrics on "${hostPort}": ${(err as Error).message}`, {
      cause: err,
    });
  }
  const addr = `${server.addr.hostname}:${server.addr.port}`;
  log.info("serving metrics", { addr: `http://${addr}/metrics` });
  return { addr, close: () => server.shutdown() };
}
