// The L7 proxy's listener ports across restarts (`<state-dir>/proxy-ports.json`, listener key →
// port): a restarted agent listens for each (endpoint, direction, ports) on the port the kernel's
// redirect entries still name (no drop-178 window), and a new listener never takes a port an
// earlier run's listener still owns. It picks candidates; listening is the caller's.

import type { Logger } from "../log.ts";

export class ListenerPorts {
  /** Listener ports of earlier runs, by listener key (kept for keys not reopened yet). */
  readonly #saved = new Map<string, number>();
  readonly #file: string | undefined;
  readonly #log: Logger;

  constructor(file: string | undefined, log: Logger) {
    this.#file = file;
    this.#log = log;
    for (const [k, v] of Object.entries(readPorts(file))) this.#saved.set(k, v);
  }

  /** The port `key` had (in this run or an earlier one), if any. */
  get(key: string): number | undefined {
    return this.#saved.get(key);
  }

  /**
   * The ports `key` may listen on, best first: its own saved port, then from `base` up every port
   * neither `used` now nor saved for another key.
   */
  candidates(key: string, used: ReadonlySet<number>, base: number): number[] {
    // Ports of earlier runs stay with their keys: the kernel's entries still name them.
    const reserved = new Set([...this.#saved].filter(([k]) => k !== key).map(([, p]) => p));
    const before = this.#saved.get(key);
    const out = before !== undefined && !used.has(before) ? [before] : [];
    for (let port = base; port < 30000; port++) {
      if (!used.has(port) && !reserved.has(port) && port !== before) out.push(port);
    }
    return out;
  }

  /** Records (or, with undefined, forgets) the port of `key`, and saves the file. */
  save(key: string, port: number | undefined): void {
    if (port === undefined) this.#saved.delete(key);
    else this.#saved.set(key, port);
    if (!this.#file) return;
    try {
      const tmp = `${this.#file}.tmp`;
      Deno.writeTextFileSync(tmp, JSON.stringify(Object.fromEntries(this.#saved)) + "\n");
      Deno.renameSync(tmp, this.#file);
    } catch (err) {
      this.#log.warn("cannot save L7 proxy ports", { file: this.#file, error: err });
    }
  }

  /** Forgets the saved ports of endpoints that are not in `live`. */
  retain(live: ReadonlySet<number>): void {
    const gone = [...this.#saved.keys()].filter((k) => !live.has(Number(k.split("/")[0])));
    if (gone.length === 0) return;
    for (const k of gone) this.#saved.delete(k);
    this.save(gone[0]!, undefined);
  }
}

/** Listener ports saved by an earlier run ({} when there are none or the file is unreadable). */
function readPorts(file: string | undefined): Record<string, number> {
  if (!file) return {};
  try {
    const v = JSON.parse(Deno.readTextFileSync(file));
    const out: Record<string, number> = {};
    for (const [k, p] of Object.entries(v ?? {})) {
      if (Number.isInteger(p) && (p as number) > 0 && (p as number) < 65536) out[k] = p as number;
    }
    return out;
  } catch {
    return {};
  }
}
