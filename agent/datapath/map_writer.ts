// Writes map changes through `bpftool batch` (one process for many updates): all updates first,
// then deletes, so a change never opens a window with less than the old or the new state.
// Deleting a key that is already gone is not an error. It knows nothing of what the keys mean.
import { type BpfTool, hexArgs } from "./bpftool.ts";

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
  constructor(bpftool: BpfTool) {
    this.#bpftool = bpftool;
  }

  async apply(pinned: string, updates: readonly MapUpdate[], deletes: readonly Uint8Array[]) {
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
