// The main thread's side of the DNS proxy's UDP data path: it hands the listener sockets (bound
// here through FFI, so one port serves UDP and TCP) to a Worker (dns_udp_worker.ts) that serves
// every datagram in its own loop, and answers what the Worker asks: a verdict the Worker has not
// cached (the engine judges here), and the learning of an answer's addresses (the datapath is
// written here, before the Worker releases the answer). It moves the shared generation whenever
// the engine or the DNS cache changes, so the Worker drops what it cached. It takes the flow
// records the Worker batches. If the Worker fails after it started, the main thread closes what
// it left (its upstream legs and their proxy-NAT entries) and starts another on the same listener
// sockets (queries wait in them meanwhile), at most RESTARTS times a minute with a growing pause;
// past that, or if the first start fails, the sockets are closed: no DNS answer bypasses the
// proxy (fail closed).

import type { Logger } from "../log.ts";
import * as S from "../sys/sockets_ffi.ts";
import type { DnsJudge, DnsRecord } from "./_dns_proxy_options.ts";
import { type FromMain, SHARED, type ToMain, type WorkerStart } from "./_dns_udp_protocol.ts";
import { recordsOf } from "./_dns_udp_records.ts";
import { stopWorker } from "./_worker_stop.ts";

type Ips = { ip: string; ttl: number }[];

export interface DnsUdpPathOptions {
  judge: DnsJudge;
  learn: (epId: number, names: string[], ips: Ips) => Promise<string | undefined>;
  /** Until when (epoch ms) the datapath holds every (name, address) of the endpoint, if it does. */
  knownUntil?: (epId: number, names: string[], ips: Ips) => number | undefined;
  log: Logger;
  onRecords: (records: DnsRecord[]) => void;
  /** Removes a leg's proxy-NAT entry (the legs of a failed Worker). */
  deleteNat?: (n: { server: { ip: string; port: number }; localPort: number }) => void;
  /** The first pause before a restart (ms; default 100, doubled per restart within a minute). */
  restartDelayMs?: number;
}

/** A failed Worker is restarted at most this many times a minute. */
export const RESTARTS = 5;

export type DnsUdpStart = Omit<WorkerStart, "t" | "shared" | "wakeFd">;

export class DnsUdpPath {
  readonly #o: DnsUdpPathOptions;
  /** The current Worker's shared memory (each Worker gets its own; the generation carries over). */
  #shared = new Int32Array(new SharedArrayBuffer(4 * SHARED.SIZE));
  #worker: Worker | undefined;
  #start: DnsUdpStart | undefined;
  #wakeFd = -1;
  #listeners: number[] = [];
  /** The current Worker's upstream legs (fd → its NAT entry), closed here if it fails. */
  readonly #legs = new Map<number, { server: { ip: string; port: number }; localPort: number }>();
  /** When the Worker was restarted (ms, the last minute). */
  #restarts: number[] = [];
  #restartTimer: ReturnType<typeof setTimeout> | undefined;
  #closing = false;
  #acquired = false;
  #closed: (() => void) | undefined;
  readonly #one = new Uint8Array(new BigUint64Array([1n]).buffer);

  /** How many times the Worker was restarted after a failure. */
  restarts = 0;

  constructor(o: DnsUdpPathOptions) {
    this.#o = o;
  }

  /** Starts the Worker on the bound `listeners` (this path owns them from now on). */
  start(s: DnsUdpStart): Promise<void> {
    S.acquire();
    this.#acquired = true;
    const c = S.libc();
    this.#start = s;
    this.#listeners = s.listeners.map((l) => l.fd);
    this.#wakeFd = c.eventfd(0, S.EFD_NONBLOCK | S.EFD_CLOEXEC);
    if (this.#wakeFd < 0) {
      const err = S.sysError("eventfd");
      this.#closeFds();
      return Promise.reject(err);
    }
    return this.#spawn().catch((err) => {
      this.#giveUp();
      throw err;
    });
  }

  /** A Worker on the listeners; resolves when it serves, rejects if it fails first. */
  #spawn(): Promise<void> {
    const shared = new Int32Array(new SharedArrayBuffer(4 * SHARED.SIZE));
    shared[SHARED.GENERATION] = this.#generation;
    this.#shared = shared;
    const w = new Worker(new URL("./dns_udp_worker.ts", import.meta.url).href, {
      type: "module",
    });
    this.#worker = w;
    let ready = false;
    return new Promise((resolve, reject) => {
      const fail = (error: string) => {
        if (this.#worker !== w) return;
        if (!ready) reject(new Error(`The DNS proxy worker failed: ${error}`));
        this.#failed(error, ready);
      };
      w.onmessage = (e: MessageEvent<ToMain>) => {
        if (this.#worker !== w) return; // a failed Worker's last words
        const m = e.data;
        if (m.t === "ready") {
          ready = true;
          resolve();
        } else if (m.t === "failed") fail(m.error);
        else this.#handle(m, w);
      };
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        fail(e.message);
      };
      this.#post({
        t: "start",
        shared: shared.buffer as SharedArrayBuffer,
        wakeFd: this.#wakeFd,
        ...this.#start!,
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

  #post(m: FromMain, to?: Worker): void {
    if (!this.#worker || (to !== undefined && to !== this.#worker)) return; // for a failed one
    this.#worker.postMessage(m);
    Atomics.add(this.#shared, SHARED.POSTED, 1);
    S.libc().write(this.#wakeFd, this.#one, 8n);
  }

  #handle(m: ToMain, w: Worker): void {
    switch (m.t) {
      case "judge": {
        let v = { allowed: false, cookie: m.o.cookie };
        try {
          v = this.#o.judge(m.o, m.name, 17);
        } catch (err) {
          this.#o.log.warn("DNS proxy: cannot judge a query", { error: err, name: m.name });
        }
        this.#post({ t: "verdict", qid: m.qid, ...v, generation: this.#generation }, w);
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
          }, w);
        });
        return;
      }
      case "records": {
        const batch = m.batch;
        for (const r of batch.refresh) {
          this.#o.learn(r.epId, r.names, r.ips).then((error) => {
            if (error) this.#o.log.warn("DNS proxy: cannot refresh learned addresses", { error });
          }, () => {});
        }
        this.#o.onRecords(recordsOf(batch.records));
        return;
      }
      case "leg":
        if (m.open) this.#legs.set(m.fd, { server: m.server, localPort: m.localPort });
        else this.#legs.delete(m.fd);
        return;
      case "log":
        this.#o.log[m.level](m.msg, m.error !== undefined ? { error: m.error } : {});
        return;
      case "closed":
        this.#closed?.();
        return;
    }
  }

  /**
   * The Worker stopped serving: what it left goes, and another starts on the same sockets (a
   * Worker that served, within the restart budget); else the sockets close (fail closed).
   */
  #failed(error: string, served: boolean): void {
    this.#worker?.terminate();
    this.#worker = undefined;
    this.#closeLegs();
    if (this.#closing || !served) return; // start() or close() handles it
    const now = Date.now();
    this.#restarts = this.#restarts.filter((t) => now - t < 60_000);
    if (this.#restarts.length >= RESTARTS) {
      this.#o.log.error("DNS proxy worker failed: UDP DNS is not served", {
        error,
        restarts: `${RESTARTS} in the last minute`,
      });
      this.#giveUp();
      return;
    }
    const delay = (this.#o.restartDelayMs ?? 100) * 2 ** this.#restarts.length;
    this.#restarts.push(now);
    this.#o.log.error("DNS proxy worker failed: restarting it", { error, inMs: delay });
    this.#restartTimer = setTimeout(() => {
      this.#restartTimer = undefined;
      if (this.#closing) return;
      this.#spawn().then(() => {
        this.restarts++;
        this.#o.log.info("DNS proxy worker restarted");
      }, (err) => {
        this.#o.log.error("DNS proxy worker did not restart: UDP DNS is not served", {
          error: err,
        });
        this.#giveUp();
      });
    }, delay);
  }

  /** Closes the upstream legs a failed Worker left, with their proxy-NAT entries. */
  #closeLegs(): void {
    const c = S.libc();
    for (const [fd, nat] of this.#legs) {
      c.close(fd);
      try {
        this.#o.deleteNat?.(nat);
      } catch { /* maps closed */ }
    }
    this.#legs.clear();
  }

  /** No Worker serves any more: the sockets close (fail closed). */
  #giveUp(): void {
    this.#worker?.terminate();
    this.#worker = undefined;
    this.#closeLegs();
    this.#closeFds();
  }

  #closeFds(): void {
    const c = S.libc();
    for (const fd of this.#listeners) c.close(fd);
    this.#listeners = [];
    if (this.#wakeFd >= 0) c.close(this.#wakeFd);
    this.#wakeFd = -1;
    if (this.#acquired) S.release();
    this.#acquired = false;
  }

  /** Stops the Worker (it closes its sockets and legs) and waits for it (at most 2 s). */
  async close(): Promise<void> {
    this.#closing = true;
    clearTimeout(this.#restartTimer);
    const w = this.#worker;
    if (!w) {
      this.#closeFds();
      return;
    }
    const done = new Promise<void>((resolve) => this.#closed = resolve);
    const stopped = await stopWorker(w, done, () => {
      Atomics.store(this.#shared, SHARED.STOP, 1);
      S.libc().write(this.#wakeFd, this.#one, 8n);
    });
    this.#worker = undefined;
    if (!stopped) {
      this.#o.log.warn("DNS proxy worker did not stop in 2 s");
      this.#closeLegs();
    } else {
      this.#listeners = []; // the Worker closed them and its legs
      this.#legs.clear();
    }
    this.#closeFds();
  }
}
