// What the DNS proxy (dns_proxy.ts) reports of each answered query: cilia_dns_requests_total by
// verdict and the latency histogram, and the flow record, handed to onBatch (or one at a time to
// onRecord) in batches, off the answer's path and never dropped: at most RECORD_BATCH_MS after
// the answer went out on the main thread, and as they come for the UDP Worker's batches.

import type { Logger } from "../log.ts";
import type { Histogram, Metrics } from "../metrics.ts";
import type { DnsRecord } from "./_dns_proxy_options.ts";

/** Records are handed to onRecord in batches, at most this long after their answer went out. */
const RECORD_BATCH_MS = 5;

export class DnsFlows {
  readonly #log: Logger;
  /** cilia_dns_requests_total by verdict, the label text made once (the per-query path). */
  readonly #requests: Record<"forwarded" | "refused" | "error", () => void>;
  readonly #latency: Histogram;
  /** Records not handed over yet. */
  #records: DnsRecord[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  onRecord: ((r: DnsRecord) => void) | undefined;
  /** When set, records go here a batch at a time instead of to onRecord. */
  onBatch: ((records: DnsRecord[]) => void) | undefined;

  constructor(metrics: Metrics, log: Logger, onRecord?: (r: DnsRecord) => void) {
    this.#log = log;
    this.onRecord = onRecord;
    const requests = metrics.counter(
      "cilia_dns_requests_total",
      "DNS queries judged by the DNS proxy, by verdict (forwarded, refused, error)",
    );
    this.#requests = {
      forwarded: requests.bound({ verdict: "forwarded" }),
      refused: requests.bound({ verdict: "refused" }),
      error: requests.bound({ verdict: "error" }),
    };
    this.#latency = metrics.histogram(
      "cilia_dns_request_duration_seconds",
      "time from a query to its answer through the DNS proxy (upstream included)",
      [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    );
  }

  #count(r: DnsRecord): void {
    this.#requests[r.error !== undefined ? "error" : r.allowed ? "forwarded" : "refused"]();
    this.#latency.observe(r.latencyMs / 1000);
  }

  /** A query answered on the main thread: counted, and its record queued for the next batch. */
  add(r: DnsRecord): void {
    this.#count(r);
    if (!this.onRecord && !this.onBatch) return;
    this.#records.push(r);
    this.#timer ??= setTimeout(() => this.flush(), RECORD_BATCH_MS);
  }

  /** A batch from the UDP Worker: counted, and handed over as it is (no second timer, no copy). */
  addBatch(records: DnsRecord[]): void {
    for (const r of records) this.#count(r);
    this.#hand(records);
  }

  /** Hands every queued record over now. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const batch = this.#records;
    this.#records = [];
    this.#hand(batch);
  }

  #hand(batch: DnsRecord[]): void {
    if (this.onBatch) {
      try {
        if (batch.length > 0) this.onBatch(batch);
      } catch (err) {
        this.#log.warn("DNS proxy: a batch of flow records failed", { error: err });
      }
      return;
    }
    for (const r of batch) {
      try {
        this.onRecord?.(r);
      } catch (err) {
        this.#log.warn("DNS proxy: a flow record failed", { error: err });
      }
    }
  }
}
