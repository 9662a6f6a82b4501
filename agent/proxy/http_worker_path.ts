// The main thread's side of the L7 proxy's HTTP/1.1 Worker (http_worker.ts; issue 10): it starts
// the Worker, hands it each HTTP listener socket the proxy made (fds are process-wide), answers
// the verdicts the Worker has not cached (the engine judges here: one evaluator), takes the
// batches of records it packs (l7_batch.ts), and moves the shared generation whenever the engine changes, so the Worker
// drops what it cached. If the Worker fails, every fd it owned (listeners, clients, upstream
// legs) is closed: redirected SYNs then find no listener and the kernel drops them (178), and no
// request passes unchecked (fail closed). A Worker whose loop has not turned for WATCHDOG_MS is
// failed the same way (a stuck Worker is a proxy that is down).

import type { Logger } from "../log.ts";
import type { OrigDestination } from "../datapath/proxy_maps.ts";
import * as S from "../sys/sockets_ffi.ts";
import type { HttpRequestInfo } from "./http_records.ts";
import type { L7BatchWire } from "./l7_batch.ts";
import type { UpstreamPorts } from "./_upstream_ports.ts";
import { type FromMain, MAX_FD, SHARED, type ToMain } from "./_http_worker_protocol.ts";
import { stopWorker } from "./_worker_stop.ts";

/** A Worker whose loop did not turn for this long is failed. */
const WATCHDOG_MS = 5000;
/** How long a failed Worker has to leave its loop before its fds are closed under it. */
const ABORT_GRACE_MS = 100;

export interface HttpVerdict {
  allowed: boolean;
  cookie: number;
  rule: number;
  /** The server endpoint judged as well (two L7 hops on this node). */
  hop2?: number | undefined;
}

export interface HttpWorkerPathOptions {
  pins: { cfg: string; orig: string; nat: string };
  ports: UpstreamPorts;
  log: Logger;
  judge(o: OrigDestination, req: HttpRequestInfo): HttpVerdict;
  /** A batch of the Worker's records, its metrics counted (l7_batch.ts). */
  onRecords(batch: L7BatchWire): void;
  /** The Worker failed and its fds are closed (called once). */
  onFailed(error: string): void;
  headerTimeoutMs?: number | undefined;
  idleTimeoutMs?: number | undefined;
  /** The unix socket h2c connections are relayed to (the main thread's h2 path). */
  relay?: string | undefined;
}

export class HttpWorkerPath {
  readonly #o: HttpWorkerPathOptions;
  readonly #shared = new Int32Array(new SharedArrayBuffer(4 * SHARED.SIZE));
  readonly #fds = new Int32Array(new SharedArrayBuffer(MAX_FD / 8));
  readonly #one = new Uint8Array(new BigUint64Array([1n]).buffer);
  #worker: Worker | undefined;
  #wakeFd = -1;
  #closed: (() => void) | undefined;
  #watchdog: ReturnType<typeof setInterval> | undefined;

  constructor(o: HttpWorkerPathOptions) {
    this.#o = o;
  }

  get running(): boolean {
    return this.#worker !== undefined;
  }

  /** Starts the Worker; resolves when it serves. */
  start(): Promise<void> {
    S.acquire();
    this.#wakeFd = S.libc().eventfd(0, S.EFD_NONBLOCK | S.EFD_CLOEXEC);
    if (this.#wakeFd < 0) {
      const err = S.sysError("eventfd");
      S.release();
      return Promise.reject(err);
    }
    const w = new Worker(new URL("./http_worker.ts", import.meta.url).href, { type: "module" });
    this.#worker = w;
    return new Promise((resolve, reject) => {
      w.onmessage = (e: MessageEvent<ToMain>) => {
        const m = e.data;
        if (m.t === "ready") {
          resolve();
          this.#watch();
        } else if (m.t === "failed") {
          reject(new Error(`The HTTP proxy worker failed: ${m.error}`));
          this.fail(m.error);
        } else this.#handle(m);
      };
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        reject(new Error(`The HTTP proxy worker failed: ${e.message}`));
        this.fail(e.message);
      };
      this.#post({
        t: "start",
        shared: this.#shared.buffer as SharedArrayBuffer,
        fds: this.#fds.buffer as SharedArrayBuffer,
        ports: this.#o.ports.buffer,
        portRange: this.#o.ports.range,
        wakeFd: this.#wakeFd,
        pins: this.#o.pins,
        ...(this.#o.headerTimeoutMs !== undefined
          ? { headerTimeoutMs: this.#o.headerTimeoutMs }
          : {}),
        ...(this.#o.idleTimeoutMs !== undefined ? { idleTimeoutMs: this.#o.idleTimeoutMs } : {}),
        ...(this.#o.relay !== undefined ? { relay: this.#o.relay } : {}),
      });
    });
  }

  /** The Worker serves the listener socket `fd` (proxy port `port`) from now on. */
  listen(fd: number, port: number, gateways: { gateway: string; gateway6: string }): void {
    if (!this.#worker) throw new Error("The HTTP proxy worker is not running");
    if (fd < MAX_FD) Atomics.or(this.#fds, fd >>> 5, 1 << (fd & 31));
    this.#post({ t: "listen", fd, port, ...gateways });
  }

  /** The Worker closes the listener on `port` (its connections go on). */
  unlisten(port: number): void {
    this.#post({ t: "unlisten", port });
  }

  /** Cached verdicts are stale from now on (call before the engine changes). */
  invalidate(): void {
    Atomics.add(this.#shared, SHARED.GENERATION, 1);
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
        const generation = Atomics.load(this.#shared, SHARED.GENERATION);
        let v: HttpVerdict = { allowed: false, cookie: m.o.cookie, rule: -1 };
        try {
          v = this.#o.judge(m.o, m.req);
        } catch (err) {
          this.#o.log.warn("L7 proxy: cannot judge a request", { error: err, path: m.req.path });
        }
        this.#post({
          t: "verdict",
          qid: m.qid,
          allowed: v.allowed,
          cookie: v.cookie,
          rule: v.rule,
          hop2: v.hop2 ?? -1,
          generation,
        });
        return;
      }
      case "records":
        try {
          this.#o.onRecords(m.batch);
        } catch (err) {
          this.#o.log.warn("L7 proxy: a batch of records from the HTTP worker failed", {
            error: err,
          });
        }
        return;
      case "log":
        this.#o.log[m.level](m.msg, m.error !== undefined ? { error: m.error } : {});
        return;
      case "closed":
        this.#closed?.();
        return;
    }
  }

  /** Fails the Worker when its loop stops turning. */
  #watch(): void {
    let beat = Atomics.load(this.#shared, SHARED.BEAT), since = Date.now();
    this.#watchdog = setInterval(() => {
      const now = Atomics.load(this.#shared, SHARED.BEAT);
      if (now !== beat) beat = now, since = Date.now();
      else if (Date.now() - since >= WATCHDOG_MS) {
        this.fail(`no turn of its loop in ${WATCHDOG_MS} ms`);
      }
    }, 1000);
    Deno.unrefTimer(this.#watchdog);
  }

  /**
   * The Worker stops serving at once (it failed, or stopped turning): it is terminated and every
   * fd it owned is closed (fail closed); onFailed follows.
   */
  fail(error: string): void {
    if (!this.#worker) return;
    clearInterval(this.#watchdog);
    this.#o.log.error("HTTP proxy worker failed: its listeners and connections are closed", {
      error,
    });
    // The Worker leaves its loop when epoll_wait returns (woken here) and touches no fd after;
    // its fds are closed a moment later, once it is out of the batch it may be serving.
    Atomics.store(this.#shared, SHARED.ABORT, 1);
    if (this.#wakeFd >= 0) S.libc().write(this.#wakeFd, this.#one, 8n);
    this.#worker.terminate();
    this.#worker = undefined;
    setTimeout(() => {
      this.#closeOwned();
      this.#closeWake();
      this.#o.onFailed(error);
    }, ABORT_GRACE_MS);
  }

  #closeOwned(): void {
    const c = S.libc();
    for (let w = 0; w < this.#fds.length; w++) {
      const bits = Atomics.exchange(this.#fds, w, 0);
      for (let b = 0; bits !== 0 && b < 32; b++) if (bits & (1 << b)) c.close(w * 32 + b);
    }
  }

  #closeWake(): void {
    if (this.#wakeFd < 0) return;
    S.libc().close(this.#wakeFd);
    this.#wakeFd = -1;
    S.release();
  }

  /** Stops the Worker (it closes its sockets) and waits for it (at most 2 s). */
  async close(): Promise<void> {
    const w = this.#worker;
    if (!w) return;
    const done = new Promise<void>((resolve) => this.#closed = resolve);
    clearInterval(this.#watchdog);
    const stopped = await stopWorker(w, done, () => {
      Atomics.store(this.#shared, SHARED.STOP, 1);
      S.libc().write(this.#wakeFd, this.#one, 8n);
    });
    this.#worker = undefined;
    if (!stopped) this.#o.log.warn("HTTP proxy worker did not stop in 2 s");
    this.#closeOwned(); // (what it did not close itself)
    this.#closeWake();
  }
}
