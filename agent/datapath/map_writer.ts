// Writes map changes through `bpftool batch` (one process for many updates): all updates first,
// then deletes, so a change never opens a window with less than the old or the new state.
// Deleting a key that is already gone is not an error. It knows nothing of what the keys mean.
import { type BpfTool, hexArgs } from "./bpftool.ts";

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
    await this.#bpftool.batch(lines, `Cannot update map "${pinned}"`);
    let rest = deletes.map((k) => `map delete pinned ${pinned} key hex ${hexArgs(k)}`);
    // bpftool batch stops at the first failing command; skip deletes of missing keys and go on.
    while (rest.length > 0) {
      const r = await this.#bpftool.batchUntilError(rest);
      if (r.error === undefined) return;
      if (!/No such file or directory/.test(r.error)) {
        throw new Error(`Cannot delete from map "${pinned}": ${r.error}`);
      }
      rest = rest.slice(r.done + 1);
    }
  }
}
