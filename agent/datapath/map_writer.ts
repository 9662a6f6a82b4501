// Writes map changes: all updates first, then deletes, so a change never opens a window with
// less than the old or the new state. Deleting a key that is already gone is not an error. It
// knows nothing of what the keys mean. Two ways, the same outcome: through libbpf in this process
// (`ffi: true`, the agent's datapath: a CNI ADD writes three maps, and a process each cost the
// agent a fork of itself), or through `bpftool batch` (one process for many updates; what a fault
// test's fake bpftool intercepts, chosen with CILIA_MAP_WRITER=bpftool). Both stop at the first
// failing update, with the errno's text in the message (e.g. "No space left on device").
import { type BpfTool, hexArgs } from "./bpftool.ts";
import { closeFd, errnoText, mapDeleteErrno, mapInfo, mapUpdate, objGet, withLibs } from "./ffi.ts";

const ENOENT = 2;
/** Per-CPU map types (a value per CPU): written through bpftool. */
const PER_CPU = new Set([5, 6, 10]);

/** Entries written, by `${map}/${op}/${outcome}` (read by the agent's metrics). */
export const MAP_OPS = new Map<string, number>();

function countOps(pinned: string, op: string, outcome: string, n: number): void {
  if (n === 0) return;
  const k = `${pinned.slice(pinned.lastIndexOf("/") + 1)}/${op}/${outcome}`;
  MAP_OPS.set(k, (MAP_OPS.get(k) ?? 0) + n);
}

export interface MapUpdate {
  key: Uint8Array;
  value: Uint8Array;
}

export class MapWriter {
  readonly #bpftool: BpfTool;
  readonly #ffi: boolean;
  constructor(bpftool: BpfTool, opts: { ffi?: boolean } = {}) {
    this.#bpftool = bpftool;
    this.#ffi = opts.ffi ?? false;
  }

  async apply(pinned: string, updates: readonly MapUpdate[], deletes: readonly Uint8Array[]) {
    if (updates.length === 0 && deletes.length === 0) return;
    if (this.#ffi && withLibs(() => this.#applyInProcess(pinned, updates, deletes))) return;
    await this.#applyBatch(pinned, updates, deletes);
  }

  /** Through libbpf; false (nothing written) for a map it leaves to bpftool (per-CPU values). */
  #applyInProcess(
    pinned: string,
    updates: readonly MapUpdate[],
    deletes: readonly Uint8Array[],
  ): boolean {
    const fd = objGet(pinned);
    try {
      if (PER_CPU.has(mapInfo(fd).type)) return false;
      for (const [i, u] of updates.entries()) {
        const r = mapUpdate(fd, u.key, u.value);
        if (r === 0) continue;
        countOps(pinned, "update", "success", i);
        countOps(pinned, "update", "failure", updates.length - i);
        throw new Error(
          `Cannot update map "${pinned}": entry ${i + 1} of ${updates.length}: ${errnoText(-r)}`,
        );
      }
      countOps(pinned, "update", "success", updates.length);
      let deleted = 0;
      for (const [i, k] of deletes.entries()) {
        const r = mapDeleteErrno(fd, k);
        if (r === 0) deleted++;
        else if (r !== -ENOENT) {
          countOps(pinned, "delete", "success", deleted);
          countOps(pinned, "delete", "failure", deletes.length - i);
          throw new Error(`Cannot delete from map "${pinned}": ${errnoText(-r)}`);
        }
      }
      countOps(pinned, "delete", "success", deleted);
      return true;
    } finally {
      closeFd(fd);
    }
  }

  async #applyBatch(
    pinned: string,
    updates: readonly MapUpdate[],
    deletes: readonly Uint8Array[],
  ) {
    const lines = updates.map((u) =>
      `map update pinned ${pinned} key hex ${hexArgs(u.key)} value hex ${hexArgs(u.value)}`
    );
    try {
      await this.#bpftool.batch(lines, `Cannot update map "${pinned}"`);
      countOps(pinned, "update", "success", updates.length);
    } catch (err) {
      countOps(pinned, "update", "failure", updates.length);
      throw err;
    }
    let deleted = deletes.length;
    let rest = deletes.map((k) => `map delete pinned ${pinned} key hex ${hexArgs(k)}`);
    // bpftool batch stops at the first failing command; skip deletes of missing keys and go on.
    while (rest.length > 0) {
      const r = await this.#bpftool.batchUntilError(rest);
      if (r.error === undefined) break;
      if (!/No such file or directory/.test(r.error)) {
        countOps(pinned, "delete", "failure", rest.length - r.done);
        countOps(pinned, "delete", "success", deleted - (rest.length - r.done));
        throw new Error(`Cannot delete from map "${pinned}": ${r.error}`);
      }
      rest = rest.slice(r.done + 1);
      deleted--;
    }
    countOps(pinned, "delete", "success", deleted);
  }
}
