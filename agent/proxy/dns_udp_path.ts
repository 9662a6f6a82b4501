// The main thread's side of the DNS proxy's UDP data path: it hands the listener sockets (bound
// here through FFI, so one port serves UDP and TCP) to a Worker (dns_udp_worker.ts) that serves
// every datagram in its own loop, and answers what the Worker asks: a verdict the Worker has not
// cached (the engine judges here), and the learning of an answer's addresses (the datapath is
// written here, before the Worker releases the answer). It moves the shared generation whenever
// the engine or the DNS cache changes, so the Worker drops what it cached. It takes the flow
// records the Worker batches. If the Worker fails, its sockets are closed: no DNS answer
// bypasses the proxy (fail closed).

import type { Logger } from "../log.ts";
import * as S from "../sys/sockets_ffi.ts";
import type { DnsJudge, DnsRecord } from "./dns_proxy.ts";
import {
  type FromMain,
  type RecordBatch,
  SHARED,
  type ToMain,
  type WorkerStart,
} from "./_dns_udp_protocol.ts";

type Ips = { ip: string; ttl: number }[];

export interface DnsUdpPathOptions {
  judge: DnsJudge;
  learn: (epId: number, names: string[], ips: Ips) => Promise<string | undefined>;
  /** Until when (epoch ms) the datapath holds every (name, address) of the endpoint, if it does. */
  knownUntil?: (epId: number, names: string[], ips: Ips) => number | undefined;
  log: Logger;
  onRecords: (records: DnsRecord[]) => void;
}

export type DnsUdpStart = Omit<WorkerStart, "t" | "shared" | "wakeFd">;

export class DnsUdpPath {
  readonly #o: DnsUdpPathOptions;
  readonly #shared = new Int32Array(new SharedArrayBuffer(4 * SHARED.SIZE));
  #worker: Worker | undefined;
  #wakeFd = -1;
  #listeners: number[] = [];
  #closed: (() => void) | undefined;
  readonly #one = new Uint8Array(new BigUint64Array([1n]).buffer);

  constructor(o: DnsUdpPathOptions) {
    this.#o = o;
  }

  /** Starts the Worker on the bound `listeners` (it owns them from now on). */
  start(s: DnsUdpStart): Promise<void> {
    S.acquire();
    const c = S.libc();
    this.#listeners = s.listeners.map((l) => l.fd);
    this.#wakeFd = c.eventfd(0, S.EFD_NONBLOCK | S.EFD_CLOEXEC);
    if (this.#wakeFd < 0) {
      const err = S.sysError("eventfd");
      this.#closeFds();
      return Promise.reject(err);
    }
    const w = new Worker(new URL("./dns_udp_worker.ts", import.meta.url).href, {
      type: "module",
    });
    this.#worker = w;
    return new Promise((resolve, reject) => {
      w.onmessage = (e: MessageEvent<ToMain>) => {
        const m = e.data;
        if (m.t === "ready") resolve();
        else if (m.t === "failed") {
          reject(new Error(`The DNS proxy worker failed: ${m.error}`));
          this.#failed(m.error);
        } else this.#handle(m);
      };
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        reject(new Error(`The DNS proxy worker failed: ${e.message}`));
        this.#failed(e.message);
      };
      this.#post({
        t: "start",
        shared: this.#shared.buffer as SharedArrayBuffer,
        wakeFd: this.#wakeFd,
        ...s,
      });
    });
  }

  /** Cached verdicts and learned addresses are stale from now on. */
  invalidate(): void {
    Atomics.add(this.#shared, SHARED.GENERATION, 1);
  }

  get #generation(): number {
    return Atomics.load(this.#shared, SHARED.GENERATION);
  }

  #post(m: FromMain): void {
    if (!this.#worker) return;
    this.#worker.postMessage(m);
    Atomics.add(this.#shared, SHARED.POSTED, 1);
    S.libc().write(this.#wakeFd, this.#one, 8n);
  }

  #handle(m: ToMain): void {
    switch (m.t) {
      case "judge": {
        let v = { allowed: false, cookie: m.o.cookie };
        try {
          v = this.#o.judge(m.o, m.name, 17);
        } catch (err) {
          this.#o.log.warn("DNS proxy: cannot judge a query", { error: err, name: m.name });
        }
        this.#post({ t: "verdict", qid: m.qid, ...v, generation: this.#generation });
        return;
      }
      case "learn": {
        this.#o.learn(m.epId, m.names, m.ips).catch((err) => String(err)).then((error) => {
          const until = error === undefined
            ? this.#o.knownUntil?.(m.epId, m.names, m.ips)
            : undefined;
          this.#post({
            t: "learned",
            qid: m.qid,
            ...(error !== undefined ? { error } : {}),
            ...(until !== undefined ? { until } : {}),
            generation: this.#generation,
          });
        });
        return;
      }
      case "records": {
        const batch = JSON.parse(m.json) as RecordBatch;
        for (const r of batch.refresh) {
          this.#o.learn(r.epId, r.names, r.ips).then((error) => {
            if (error) this.#o.log.warn("DNS proxy: cannot refresh learned addresses", { error });
          }, () => {});
        }
        this.#o.onRecords(batch.records);
        return;
      }
      case "log":
        this.#o.log[m.level](m.msg, m.error !== undefined ? { error: m.error } : {});
        return;
      case "closed":
        this.#closed?.();
        return;
    }
  }

  /** The Worker stopped serving: its sockets go, so queries get no answer (fail closed). */
  #failed(error: string): void {
    this.#o.log.error("DNS proxy worker failed: UDP DNS is not served", { error });
    this.#worker?.terminate();
    this.#worker = undefined;
    this.#closeFds();
  }

  #closeFds(): void {
    const c = S.libc();
    for (const fd of this.#listeners) c.close(fd);
    this.#listeners = [];
    if (this.#wakeFd >= 0) c.close(this.#wakeFd);
    this.#wakeFd = -1;
    S.release();
  }

  /** Stops the Worker (it closes its sockets and legs) and waits for it (at most 2 s). */
  async close(): Promise<void> {
    const w = this.#worker;
    if (!w) return;
    const done = new Promise<void>((resolve) => this.#closed = resolve);
    Atomics.store(this.#shared, SHARED.STOP, 1);
    S.libc().write(this.#wakeFd, this.#one, 8n);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stopped = await Promise.race([
      done.then(() => true),
      new Promise<boolean>((r) => timer = setTimeout(() => r(false), 2000)),
    ]);
    clearTimeout(timer);
    w.terminate();
    this.#worker = undefined;
    if (!stopped) this.#o.log.warn("DNS proxy worker did not stop in 2 s");
    else this.#listeners = []; // the Worker closed them
    this.#closeFds();
  }
}
