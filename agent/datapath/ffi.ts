// The one module that calls libbpf and libc through Deno FFI, for what bpftool cannot do well:
// walking and pruning a map (conntrack GC), reading the event ring buffer (mapped into this
// process and read in place, no call per record), and reading CLOCK_MONOTONIC (the clock of
// bpf_ktime_get_ns), writing map entries for the agent and finding an interface's index
// (map_writer.ts, datapath.ts: a bpftool or ip process each cost the agent a fork of itself).
// Everything else goes through bpftool.
// Libraries are opened on demand and closed when the last user releases them, so no handle
// outlives its use (Deno's resource sanitizer sees none).

const LIBBPF_SYMBOLS = {
  bpf_obj_get: { parameters: ["buffer"], result: "i32" },
  bpf_map_get_next_key: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  bpf_map_lookup_elem: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  bpf_map_delete_elem: { parameters: ["i32", "buffer"], result: "i32" },
  bpf_map_lookup_batch: {
    parameters: ["i32", "buffer", "buffer", "buffer", "buffer", "buffer", "pointer"],
    result: "i32",
  },
  bpf_map_update_elem: { parameters: ["i32", "buffer", "buffer", "u64"], result: "i32" },
  libbpf_num_possible_cpus: { parameters: [], result: "i32" },
  bpf_obj_get_info_by_fd: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  bpf_tc_hook_create: { parameters: ["buffer"], result: "i32" },
  bpf_tc_attach: { parameters: ["buffer", "buffer"], result: "i32" },
} as const;
const LIBC_SYMBOLS = {
  close: { parameters: ["i32"], result: "i32" },
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  getpagesize: { parameters: [], result: "i32" },
  strerror: { parameters: ["i32"], result: "pointer" },
  if_nametoindex: { parameters: ["buffer"], result: "u32" },
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

/**
 * One BPF_MAP_LOOKUP_BATCH call: up to `count[0]` entries after the position `inBatch` (null: the
 * start) into `keys` and `values` (packed, key and value size apart); the kernel writes the next
 * position into `outBatch` (a hash map's is a u32 bucket index: 8 bytes suffice) and the number
 * copied into `count[0]`. 0, or a negative errno: -ENOENT once the walk reached the end (entries
 * may still have been copied), -ENOSPC when one bucket holds more than `count`.
 */
export function mapLookupBatch(
  fd: number,
  inBatch: Uint8Array | null,
  outBatch: Uint8Array,
  keys: Uint8Array,
  values: Uint8Array,
  count: Uint32Array,
): number {
  return bpf().bpf_map_lookup_batch(fd, inBatch, outBatch, keys, values, count, null);
}

export function mapLookup(fd: number, key: Uint8Array, valueSize: number): Uint8Array | undefined {
  const value = new Uint8Array(valueSize);
  return bpf().bpf_map_lookup_elem(fd, key, value) === 0 ? value : undefined;
}

/** Looks `key` up into `value` (reused by the caller); false when there is no such element. */
export function mapLookupInto(fd: number, key: Uint8Array, value: Uint8Array): boolean {
  return bpf().bpf_map_lookup_elem(fd, key, value) === 0;
}

/** Creates or replaces one element (BPF_ANY); 0 or a negative errno. */
export function mapUpdate(fd: number, key: Uint8Array, value: Uint8Array): number {
  return bpf().bpf_map_update_elem(fd, key, value, 0n);
}

export function mapDelete(fd: number, key: Uint8Array): boolean {
  return bpf().bpf_map_delete_elem(fd, key) === 0;
}

/**
 * The ifindex of a link in this process's network namespace (netlink, as `ip` does: correct
 * where /sys/class/net is not), or undefined when there is none.
 */
export function ifIndex(ifname: string): number | undefined {
  return withLibs(() => c().if_nametoindex(cstr(ifname)) || undefined);
}

const BPF_TC_INGRESS = 1, BPF_TC_EGRESS = 2, BPF_TC_F_REPLACE = 1, EEXIST = 17;

/**
 * Attaches pinned programs at tc ingress and egress of a link in this process's network
 * namespace, through libbpf's netlink calls: the clsact qdisc (one that exists is kept), then
 * each filter replaced in place (priority 1, handle 1, all protocols, direct action), as
 * `tc filter replace … pref 1 handle 1 bpf direct-action pinned …` does. No process, and no dump
 * of every link: a tc process asks the kernel for all of them first (15 ms of kernel time per
 * process with 1,000 endpoints). The filter's name is libbpf's `<program>:[<id>]`.
 */
export function tcAttach(ifindex: number, progs: { ingress: string; egress: string }): void {
  withLibs(() => {
    // struct bpf_tc_hook { size_t sz; int ifindex; u32 attach_point; u32 parent; } (24 bytes)
    const hook = new DataView(new ArrayBuffer(24));
    hook.setBigUint64(0, 24n, true);
    hook.setInt32(8, ifindex, true);
    hook.setUint32(12, BPF_TC_INGRESS | BPF_TC_EGRESS, true);
    const created = bpf().bpf_tc_hook_create(new Uint8Array(hook.buffer));
    if (created < 0 && created !== -EEXIST) {
      throw new Error(`Cannot add the clsact qdisc to link ${ifindex}: ${errnoText(-created)}`);
    }
    for (const [point, path] of [[BPF_TC_INGRESS, progs.ingress], [BPF_TC_EGRESS, progs.egress]]) {
      hook.setUint32(12, point as number, true);
      const fd = objGet(path as string);
      try {
        // struct bpf_tc_opts { size_t sz; int prog_fd; u32 flags, prog_id, handle, priority; }
        const opts = new DataView(new ArrayBuffer(32));
        opts.setBigUint64(0, 32n, true);
        opts.setInt32(8, fd, true);
        opts.setUint32(12, BPF_TC_F_REPLACE, true);
        opts.setUint32(20, 1, true); // handle
        opts.setUint32(24, 1, true); // priority
        const r = bpf().bpf_tc_attach(new Uint8Array(hook.buffer), new Uint8Array(opts.buffer));
        if (r < 0) {
          const at = point === BPF_TC_INGRESS ? "ingress" : "egress";
          throw new Error(`Cannot attach "${path}" at ${at} of link ${ifindex}: ${errnoText(-r)}`);
        }
      } finally {
        closeFd(fd);
      }
    }
  });
}

/** The C library's message for an errno ("No space left on device"). */
export function errnoText(errno: number): string {
  const p = c().strerror(errno);
  return p === null ? `error ${errno}` : Deno.UnsafePointerView.getCString(p);
}

/**
 * `struct bpf_map_info` fields: type, key and value size, max_entries (the kernel fills what
 * fits in 80 bytes).
 */
export function mapInfo(
  fd: number,
): { type: number; keySize: number; valueSize: number; maxEntries: number } {
  const info = new Uint32Array(20);
  const len = new Uint32Array([info.byteLength]);
  const r = bpf().bpf_obj_get_info_by_fd(fd, info, len);
  if (r !== 0) throw new Error(`Cannot read the map's info: error ${-r}`);
  return { type: info[0]!, keySize: info[2]!, valueSize: info[3]!, maxEntries: info[4]! };
}

/** Deletes one element; 0 or a negative errno (-ENOENT when it was not there). */
export function mapDeleteErrno(fd: number, key: Uint8Array): number {
  return bpf().bpf_map_delete_elem(fd, key);
}

let possibleCpus = 0;

/** Sum over CPUs of a per-CPU array's u64 slot (e.g. events a CPU could not queue). */
export function perCpuSum(fd: number, slot: number): number {
  if (possibleCpus === 0) {
    const n = bpf().libbpf_num_possible_cpus();
    if (n <= 0) throw new Error(`Cannot count the possible CPUs: error ${-n}`);
    possibleCpus = n;
  }
  const values = new BigUint64Array(possibleCpus);
  if (bpf().bpf_map_lookup_elem(fd, new Uint32Array([slot]), values) !== 0) return 0;
  let sum = 0n;
  for (const v of values) sum += v;
  return Number(sum);
}

export const BPF_MAP_TYPE_RINGBUF = 27;
const PROT_READ = 1, PROT_WRITE = 2, MAP_SHARED = 1;
const BUSY = 0x80000000, DISCARD = 0x40000000, HDR = 8;

/**
 * A BPF ring buffer (BPF_MAP_TYPE_RINGBUF) mapped into this process and read in place, as libbpf's
 * ring_buffer__consume does but with no native call per record: the consumer page (ours to
 * write), the producer page and the data pages, mapped twice in a row by the kernel so a record
 * that wraps is contiguous. `consume()` hands each committed record to `onRecord` as an offset
 * into `bytes` (valid only during the call) and frees the space after the batch.
 */
export class RingBuffer {
  /** The data area (twice the ring, back to back); records are read from here. */
  readonly bytes: Uint8Array;
  readonly size: number;
  readonly #words: Uint32Array;
  readonly #consumer: BigUint64Array;
  readonly #producer: BigUint64Array;
  readonly #cons: { ptr: Deno.PointerValue; len: number };
  readonly #prod: { ptr: Deno.PointerValue; len: number };
  #pos = 0;
  #closed = false;

  constructor(fd: number) {
    acquire();
    try {
      const { type, maxEntries } = mapInfo(fd);
      if (type !== BPF_MAP_TYPE_RINGBUF) {
        throw new Error(
          `Cannot read events: the map is of type ${type}, not a ring buffer ` +
            `(${BPF_MAP_TYPE_RINGBUF}); a datapath from an older cilia is pinned: restart the agent`,
        );
      }
      const page = c().getpagesize();
      this.size = maxEntries;
      this.#cons = { ptr: this.#map(fd, page, PROT_READ | PROT_WRITE, 0), len: page };
      try {
        const len = page + 2 * maxEntries;
        this.#prod = { ptr: this.#map(fd, len, PROT_READ, page), len };
      } catch (err) {
        c().munmap(this.#cons.ptr, BigInt(this.#cons.len));
        throw err;
      }
    } catch (err) {
      release();
      throw err;
    }
    const view = (p: Deno.PointerValue, len: number, at = 0) =>
      Deno.UnsafePointerView.getArrayBuffer(p!, len, at);
    this.#consumer = new BigUint64Array(view(this.#cons.ptr, 8));
    this.#producer = new BigUint64Array(view(this.#prod.ptr, 8));
    const data = view(this.#prod.ptr, 2 * this.size, this.#prod.len - 2 * this.size);
    this.bytes = new Uint8Array(data);
    this.#words = new Uint32Array(data);
    this.#pos = Number(Atomics.load(this.#consumer, 0));
  }

  #map(fd: number, len: number, prot: number, offset: number): Deno.PointerValue {
    const p = c().mmap(null, BigInt(len), prot, MAP_SHARED, fd, BigInt(offset));
    const v = p ? BigInt(Deno.UnsafePointer.value(p)) : 0n;
    if (v === 0n || v === 0xffffffffffffffffn || v === -1n) {
      throw new Error(`Cannot map the event ring buffer (${len} bytes at ${offset})`);
    }
    return p;
  }

  /** Drops what is waiting: a new reader starts with new events. */
  skip(): void {
    if (this.#closed) return;
    this.#pos = Number(Atomics.load(this.#producer, 0));
    Atomics.store(this.#consumer, 0, BigInt(this.#pos));
  }

  /** Bytes written and not yet consumed. */
  get pending(): number {
    return this.#closed ? 0 : Number(Atomics.load(this.#producer, 0)) - this.#pos;
  }

  /**
   * Hands up to `max` committed records to `onRecord(offset, length)` in order and frees their
   * space; returns how many it handed over. Stops at a record still being written.
   */
  consume(onRecord: (offset: number, length: number) => void, max = Infinity): number {
    if (this.#closed) return 0;
    const prod = Number(Atomics.load(this.#producer, 0));
    let pos = this.#pos, n = 0;
    while (pos < prod && n < max) {
      const at = pos % this.size;
      const len = Atomics.load(this.#words, at >>> 2) >>> 0;
      if (len & BUSY) break;
      const dataLen = len & 0x3fffffff;
      pos += (dataLen + HDR + 7) & ~7;
      if (!(len & DISCARD)) {
        onRecord(at + HDR, dataLen);
        n++;
      }
    }
    if (pos !== this.#pos) {
      this.#pos = pos;
      Atomics.store(this.#consumer, 0, BigInt(pos));
    }
    return n;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    c().munmap(this.#prod.ptr, BigInt(this.#prod.len));
    c().munmap(this.#cons.ptr, BigInt(this.#cons.len));
    release();
  }
}
