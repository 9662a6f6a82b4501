// The L7 proxy's listeners, one per key (endpoint, direction, port or port range, and protocol
// unless HTTP), each on a port kept across restarts (_listener_ports.ts): a Deno listener this
// event loop accepts on, or a dual-stack socket made through libc whose fd the HTTP Worker serves.
// A listener exists before its port is returned (the kernel's entry is written after). It opens
// and closes listeners; serving their connections is the caller's.

import type { Logger } from "../log.ts";
import type { HttpWorkerPath } from "./http_worker_path.ts";
import { EADDRINUSE, libc, listenTcp } from "../sys/sockets_ffi.ts";
import { ListenerPorts } from "./_listener_ports.ts";
import type { L7Protocol } from "./proxy.ts";

export interface Listener {
  port: number;
  /** A Deno listener (this event loop), or the fd of one the HTTP Worker serves. */
  listener?: Deno.Listener;
  fd?: number;
  epId: number;
  protocol: L7Protocol;
}

export interface ListenersOptions {
  log: Logger;
  /** Listener ports are taken from here upwards. */
  basePort: number;
  portsFile: string | undefined;
  /** The HTTP Worker an HTTP listener is handed to (started on first use), if HTTP goes there. */
  worker(): Promise<HttpWorkerPath> | undefined;
  /** The HTTP Worker as it is now (not started by asking). */
  running(): Promise<HttpWorkerPath> | undefined;
  /** The addresses the Worker's upstream legs are made from. */
  gateways(): { gateway: string; gateway6: string };
  /** Accepts and serves the connections of a Deno listener. */
  accept(l: Listener): void;
}

export class Listeners {
  readonly #o: ListenersOptions;
  readonly #listeners = new Map<string, Listener>();
  readonly #pending = new Map<string, Promise<number>>();
  readonly #ports: ListenerPorts;
  #closed = false;

  constructor(o: ListenersOptions) {
    this.#o = o;
    this.#ports = new ListenerPorts(o.portsFile, o.log);
  }

  /** The port of the listener for `key`, listening before it returns. */
  listen(key: string, epId: number, protocol: L7Protocol): Promise<number> {
    const have = this.#listeners.get(key);
    if (have) return Promise.resolve(have.port);
    let p = this.#pending.get(key);
    if (!p) {
      p = this.#open(key, epId, protocol).finally(() => this.#pending.delete(key));
      this.#pending.set(key, p);
    }
    return p;
  }

  async #open(key: string, epId: number, protocol: L7Protocol): Promise<number> {
    if (this.#closed) throw new Error("The L7 proxy is closed");
    const used = new Set([...this.#listeners.values()].map((l) => l.port));
    const before = this.#ports.get(key);
    const candidates = this.#ports.candidates(key, used, this.#o.basePort);
    const worker = protocol === "http" ? await this.#o.worker() : undefined;
    for (const port of candidates) {
      let l: Listener;
      try {
        l = this.#listenOn(port, { epId, protocol }, worker);
      } catch (err) {
        if (err instanceof Deno.errors.AddrInUse) continue;
        if ((err as { errno?: number }).errno === EADDRINUSE) continue;
        throw err;
      }
      this.#listeners.set(key, l);
      if (l.listener) this.#o.accept(l);
      if (before !== port) this.#ports.save(key, port);
      this.#o.log.info("L7 proxy listening", { listener: key, port });
      return port;
    }
    throw new Error(`No free port for the L7 proxy listener "${key}"`);
  }

  /** A listener on `port`: handed to the HTTP Worker when there is one, else a Deno listener. */
  #listenOn(
    port: number,
    l: { epId: number; protocol: L7Protocol },
    worker: HttpWorkerPath | undefined,
  ): Listener {
    // "::" takes IPv4 too (dual stack): one socket for both families of redirects.
    if (!worker) {
      const listener = Deno.listen({ hostname: "::", port, transport: "tcp" });
      return { port, listener, ...l };
    }
    const { fd } = listenTcp("::", port);
    try {
      worker.listen(fd, port, this.#o.gateways());
    } catch (err) {
      libc().close(fd); // (the Worker died meanwhile)
      throw err;
    }
    return { port, fd, ...l };
  }

  /** Closes the listeners of an endpoint that is gone. */
  closeEndpoint(epId: number): void {
    for (const [key, l] of this.#listeners) {
      if (l.epId !== epId) continue;
      this.#listeners.delete(key);
      this.#close(l);
      this.#ports.save(key, undefined);
    }
  }

  /** Forgets the saved ports of endpoints that did not come back after a restart. */
  retainEndpoints(live: ReadonlySet<number>): void {
    this.#ports.retain(live);
  }

  get ports(): { key: string; port: number }[] {
    return [...this.#listeners].map(([key, l]) => ({ key, port: l.port }));
  }

  /** The Worker died and closed nothing: its listeners are gone (the kernel drops: 178). */
  workerFailed(): void {
    const lost: [string, Listener][] = [];
    for (const [key, l] of this.#listeners) {
      if (l.fd === undefined) continue;
      this.#listeners.delete(key);
      lost.push([key, l]);
    }
    // A new Worker listens again on the same ports (the kernel's entries name them) after 1 s.
    setTimeout(() => {
      for (const [key, l] of lost) {
        if (this.#closed || this.#listeners.has(key) || this.#pending.has(key)) continue;
        const p = this.#open(key, l.epId, l.protocol).finally(() => this.#pending.delete(key));
        this.#pending.set(key, p);
        p.catch((err) => this.#o.log.error("L7 proxy: cannot listen again", { key, error: err }));
      }
    }, 1000);
  }

  #close(l: Listener): void {
    if (l.listener) {
      try {
        l.listener.close();
      } catch { /* closed */ }
    } else if (l.fd !== undefined) {
      const w = this.#o.running();
      if (w) w.then((p) => p.unlisten(l.port), () => {});
      else libc().close(l.fd);
    }
  }

  /** Closes this loop's listeners (the Worker's close with it) and opens no more. */
  close(): void {
    this.#closed = true;
    for (const l of this.#listeners.values()) if (l.listener) this.#close(l);
    this.#listeners.clear();
  }
}
