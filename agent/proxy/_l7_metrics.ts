// The L7 proxy's metrics: requests by protocol and verdict, the request latency histogram and the
// time spent in the policy engine. Counters are bound to their labels once (formatting labels per
// request was measurable). It counts what it is told; it decides nothing and keeps no records.

import type { Counter, Histogram, Metrics } from "../metrics.ts";
import { L7_LATENCY_BUCKETS, L7_VERDICTS, type L7BatchWire } from "./l7_batch.ts";
import type { L7Record } from "./proxy.ts";

export class L7Metrics {
  readonly #requests: Counter;
  readonly #latency: Histogram;
  readonly #engineSeconds: Counter;
  /** Per-request counters bound to their labels once (labelText per request was measurable). */
  readonly #requestsBy = new Map<string, (by?: number) => void>();
  /** Adds seconds spent in the engine judging HTTP requests. */
  readonly engineHttp: (by?: number) => void;

  constructor(metrics: Metrics) {
    this.#requests = metrics.counter(
      "cilia_l7_requests_total",
      "L7 requests judged by the proxy, by protocol and verdict (forwarded, denied, error)",
    );
    this.#latency = metrics.histogram(
      "cilia_l7_request_duration_seconds",
      "time from a request's head to its response's head through the L7 proxy",
      L7_LATENCY_BUCKETS,
    );
    this.#engineSeconds = metrics.counter(
      "cilia_l7_engine_seconds_total",
      "wall time the L7 proxy spent in the policy engine deciding requests, by protocol",
    );
    this.engineHttp = this.#engineSeconds.bound({ protocol: "http" });
  }

  /** Adds seconds spent in the engine judging Kafka requests. */
  engineKafka(seconds: number): void {
    this.#engineSeconds.inc({ protocol: "kafka" }, seconds);
  }

  /** One request's record: counted by its verdict, its latency observed. */
  record(rec: L7Record, protocol: string): void {
    const kafka = rec.kafka;
    const verdict = (kafka ? kafka.errorCode === -1 : rec.error !== undefined && rec.code !== 403)
      ? "error"
      : rec.allowed
      ? "forwarded"
      : "denied";
    this.#count(protocol, verdict);
    this.#latency.observe(rec.latencyMs / 1000);
  }

  /** The counts the HTTP Worker made for a batch of its records. */
  batch(w: L7BatchWire): void {
    w.verdicts.forEach((n, i) => n > 0 && this.#count("http", L7_VERDICTS[i]!, n));
    this.#latency.add(w.latency, w.latencySum);
  }

  #count(protocol: string, verdict: string, by = 1): void {
    const key = `${protocol}/${verdict}`;
    let inc = this.#requestsBy.get(key);
    if (!inc) {
      inc = this.#requests.bound({ protocol, verdict });
      this.#requestsBy.set(key, inc);
    }
    inc(by);
  }
}
