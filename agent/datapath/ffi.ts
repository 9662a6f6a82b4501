// The one module that calls libbpf and libc through Deno FFI, for what bpftool cannot do well:
// walking and pruning a map (conntrack GC), reading the perf event array, and reading
// CLOCK_MONOTONIC (the clock of bpf_ktime_get_ns). Everything else goes through bpftool.
// Libraries are opened on demand and closed when the last user releases them, so no handle
// outlives its use (Deno's resource sanitizer sees none).

const LIBBPF_SYMBOLS = {
  bpf_obj_get: { parameters: ["buffer"], result: "i32" },
  bpf_map_get_next_key: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  bpf_map_lookup_elem: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  bpf_map_delete_elem: { parameters: ["i32", "buffer"], result: "i32" },
  bpf_map_update_elem: { parameters: ["i32", "buffer", "buffer", "u64"], result: "i32" },
  perf_buffer__new: {
    parameters: ["i32", "usize", "function", "function", "pointer", "pointer"],
    result: "pointer",
  },
  perf_buffer__consume: { parameters: ["pointer"], result: "i32" },
  perf_buffer__free: { parameters: ["pointer"], result: "void" },
  libbpf_get_error: { parameters: ["pointer"], result: "i64" },
} as const;
const LIBC_SYMBOLS = {
  close: { parameters: ["i32"], result: "i32" },
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
} as const;

let libbpf: Deno.DynamicLibrary<typeof LIBBPF_SYMBOLS> | undefined;
let libc: Deno.DynamicLibrary<typeof LIBC_SYMBOLS> | undefined;
let users = 0;

/** Opens the libraries for one user; pair every call with release(). */
export function acquire(): void {
  if (users++ === 0) {
    libbpf = Deno.dlopen("libbpf.so.1", LIBBPF_SYMBOLS);
    libc = Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
  }
}

export function release(): void {
  if (users > 0 && --users === 0) {
    libbpf?.close();
    libc?.close();
    libbpf = libc = undefined;
  }
}

/** Runs fn with the libraries open. */
export function withLibs<T>(fn: () => T): T {
  acquire();
  try {
    return fn();
  } finally {
    release();
  }
}

function bpf() {
  if (!libbpf) throw new Error("libbpf is not open: call acquire() first");
  return libbpf.symbols;
}
function c() {
  if (!libc) throw new Error("libc is not open: call acquire() first");
  return libc.symbols;
}

const cstr = (s: string) => new TextEncoder().encode(s + "\0");

/** CLOCK_MONOTONIC in nanoseconds, the clock bpf_ktime_get_ns() reads. */
export function monotonicNs(): bigint {
  return withLibs(() => {
    const ts = new BigInt64Array(2);
    if (c().clock_gettime(1, ts) !== 0) throw new Error("Cannot read CLOCK_MONOTONIC");
    return ts[0]! * 1_000_000_000n + ts[1]!;
  });
}

/** An fd for a pinned object; close it with closeFd. */
export function objGet(path: string): number {
  const fd = bpf().bpf_obj_get(cstr(path));
  if (fd < 0) throw new Error(`Cannot open pinned object "${path}": error ${-fd}`);
  return fd;
}

export function closeFd(fd: number): void {
  c().close(fd);
}

/** All keys of a map (keys may vanish while walking; deleted ones are simply skipped). */
export function mapKeys(fd: number, keySize: number, limit = 1 << 22): Uint8Array[] {
  const keys: Uint8Array[] = [];
  let prev: Uint8Array | null = null;
  for (let i = 0; i < limit; i++) {
    const next: Uint8Array = new Uint8Array(keySize);
    if (bpf().bpf_map_get_next_key(fd, prev, next) !== 0) break;
    keys.push(next);
    prev = next;
  }
  return keys;
}

export function mapLookup(fd: number, key: Uint8Array, valueSize: number): Uint8Array | undefined {
  const value = new Uint8Array(valueSize);
  return bpf().bpf_map_lookup_elem(fd, key, value) === 0 ? value : undefined;
}

/** Creates or replaces one element (BPF_ANY); 0 or a negative errno. */
export function mapUpdate(fd: number, key: Uint8Array, value: Uint8Array): number {
  return bpf().bpf_map_update_elem(fd, key, value, 0n);
}

export function mapDelete(fd: number, key: Uint8Array): boolean {
  return bpf().bpf_map_delete_elem(fd, key) === 0;
}

const SAMPLE_CB = { parameters: ["pointer", "i32", "pointer", "u32"], result: "void" } as const;
const LOST_CB = { parameters: ["pointer", "i32", "u64"], result: "void" } as const;

/** A libbpf perf buffer over a perf event array; samples arrive during consume(). */
export class PerfBuffer {
  #pb: Deno.PointerValue;
  readonly #sample: Deno.UnsafeCallback<typeof SAMPLE_CB>;
  readonly #lost: Deno.UnsafeCallback<typeof LOST_CB>;

  constructor(
    fd: number,
    opts: {
      pages: number;
      onSample: (cpu: number, data: Uint8Array) => void;
      onLost: (cpu: number, count: bigint) => void;
    },
  ) {
    acquire();
    this.#sample = new Deno.UnsafeCallback(
      SAMPLE_CB,
      (_ctx, cpu, data, size) => {
        if (!data) return;
        // One copy straight into a fresh buffer (no external ArrayBuffer per sample for the GC).
        const copy = new Uint8Array(size);
        Deno.UnsafePointerView.copyInto(data, copy);
        opts.onSample(cpu, copy);
      },
    );
    this.#lost = new Deno.UnsafeCallback(
      LOST_CB,
      (_ctx, cpu, count) => opts.onLost(cpu, BigInt(count)),
    );
    const pb = bpf().perf_buffer__new(
      fd,
      BigInt(opts.pages),
      this.#sample.pointer,
      this.#lost.pointer,
      null,
      null,
    );
    const err = pb ? Number(bpf().libbpf_get_error(pb)) : -1;
    if (!pb || err !== 0) {
      this.#sample.close();
      this.#lost.close();
      release();
      throw new Error(`Cannot open the perf buffer: error ${-err} (CAP_PERFMON or root needed)`);
    }
    this.#pb = pb;
  }

  /** Delivers every pending sample to the callbacks; returns the count or a negative errno. */
  consume(): number {
    return this.#pb ? bpf().perf_buffer__consume(this.#pb) : 0;
  }

  close(): void {
    if (!this.#pb) return;
    bpf().perf_buffer__free(this.#pb);
    this.#pb = null;
    this.#sample.close();
    this.#lost.close();
    release();
  }
}
