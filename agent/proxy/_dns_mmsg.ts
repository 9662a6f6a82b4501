// Batched datagram receives for the DNS proxy's UDP Worker (dns_udp_worker.ts, _dns_udp_legs.ts):
// one recvmmsg(2) reads every datagram queued on a socket (up to SLOTS) into fixed slots, each
// with its sender's sockaddr and, when asked, the kernel's arrival time (SO_TIMESTAMPNS), so a
// wake-up costs one system call instead of one per datagram plus the read that finds the socket
// empty. Buffers are made once; a slot's bytes are valid until the next receive() on the same
// Mmsg. It decides nothing: what a datagram is, and whether to trust it, is the caller's.
// x86-64 / arm64 (LP64) struct layouts.

/** Datagrams read by one call at most; fewer returned means the socket was empty. */
export const SLOTS = 16;
/** A slot holds the largest UDP payload. */
const SLOT_BYTES = 65536;
const NAME_BYTES = 28; // sockaddr_in6
const CONTROL_BYTES = 64; // one SCM_TIMESTAMPNS (CMSG_SPACE(16) = 32) with room
/** struct mmsghdr: msghdr (56) + msg_len, padded. */
const MMSG = 64;
const MSG_DONTWAIT = 0x40, MSG_TRUNC = 0x20;
const SOL_SOCKET = 1, SO_TIMESTAMPNS = 35;
/** Offsets in struct msghdr / mmsghdr. */
const O = { name: 0, namelen: 8, iov: 16, iovlen: 24, control: 32, controllen: 40, flags: 48 };
const MSG_LEN = 56;

const SYMBOLS = {
  recvmmsg: { parameters: ["i32", "pointer", "u32", "i32", "pointer"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "pointer", "u32"], result: "i32" },
} as const;

const ptr = (b: ArrayBufferView) => Deno.UnsafePointer.value(Deno.UnsafePointer.of(b));

export class Mmsg {
  readonly #lib = Deno.dlopen("libc.so.6", SYMBOLS);
  readonly #data = new Uint8Array(SLOTS * SLOT_BYTES);
  readonly #names = new Uint8Array(SLOTS * 32);
  readonly #control: Uint8Array | undefined;
  readonly #controlView: DataView | undefined;
  readonly #hdr = new Uint8Array(SLOTS * MMSG);
  readonly #hv = new DataView(this.#hdr.buffer);
  readonly #iov = new Uint8Array(SLOTS * 16);
  readonly #hdrPtr = Deno.UnsafePointer.of(this.#hdr);
  /** Per slot: its payload and sender's sockaddr (whole), and the last views handed out of them. */
  readonly #slots: {
    data: Uint8Array;
    name: Uint8Array;
    dataView: Uint8Array;
    nameView: Uint8Array;
  }[] = [];
  readonly #one = new Int32Array([1]);
  /** Slots the kernel wrote in the last receive() (their lengths are reset before the next). */
  #dirty = SLOTS;

  /** `timestamps`: record the kernel's arrival time of each datagram (tracing only). */
  constructor(o: { timestamps?: boolean } = {}) {
    if (o.timestamps) {
      this.#control = new Uint8Array(SLOTS * CONTROL_BYTES);
      this.#controlView = new DataView(this.#control.buffer);
    }
    const iv = new DataView(this.#iov.buffer);
    const data = ptr(this.#data), names = ptr(this.#names), iov = ptr(this.#iov);
    const control = this.#control ? ptr(this.#control) : 0n;
    for (let i = 0; i < SLOTS; i++) {
      iv.setBigUint64(i * 16, data + BigInt(i * SLOT_BYTES), true);
      iv.setBigUint64(i * 16 + 8, BigInt(SLOT_BYTES), true);
      const h = i * MMSG;
      this.#hv.setBigUint64(h + O.name, names + BigInt(i * 32), true);
      this.#hv.setBigUint64(h + O.iov, iov + BigInt(i * 16), true);
      this.#hv.setBigUint64(h + O.iovlen, 1n, true);
      if (control) this.#hv.setBigUint64(h + O.control, control + BigInt(i * CONTROL_BYTES), true);
      const slot = this.#data.subarray(i * SLOT_BYTES, (i + 1) * SLOT_BYTES);
      const sender = this.#names.subarray(i * 32, i * 32 + NAME_BYTES);
      this.#slots.push({ data: slot, name: sender, dataView: slot, nameView: sender });
    }
  }

  /** Asks the kernel for arrival times on `fd` (when this Mmsg records them); false if refused. */
  timestamp(fd: number): boolean {
    if (!this.#control) return false;
    const one = Deno.UnsafePointer.of(this.#one);
    return this.#lib.symbols.setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, one, 4) === 0;
  }

  /**
   * Reads what is queued on `fd` (non-blocking): how many datagrams, or -1 when none was (EAGAIN)
   * or on an error (errno is the caller's to read). Fewer than SLOTS: the socket was empty.
   */
  receive(fd: number): number {
    const hv = this.#hv;
    for (let i = 0; i < this.#dirty; i++) {
      const h = i * MMSG;
      hv.setUint32(h + O.namelen, NAME_BYTES, true);
      if (this.#control) hv.setBigUint64(h + O.controllen, BigInt(CONTROL_BYTES), true);
      hv.setInt32(h + O.flags, 0, true);
    }
    const n = this.#lib.symbols.recvmmsg(fd, this.#hdrPtr, SLOTS, MSG_DONTWAIT, null);
    this.#dirty = n > 0 ? n : 1;
    return n;
  }

  /**
   * Datagram i of the last receive(): its bytes (a view into the slot) or undefined if truncated.
   * The view is the slot's last one while the length repeats (no object per datagram).
   */
  data(i: number): Uint8Array | undefined {
    const h = i * MMSG;
    if ((this.#hv.getInt32(h + O.flags, true) & MSG_TRUNC) !== 0) return undefined;
    const s = this.#slots[i]!, len = this.#hv.getUint32(h + MSG_LEN, true);
    if (s.dataView.length !== len) s.dataView = s.data.subarray(0, len);
    return s.dataView;
  }

  /** The sender of datagram i (a view, its length what the kernel wrote; reused as data()'s). */
  from(i: number): Uint8Array {
    const s = this.#slots[i]!, len = this.#hv.getUint32(i * MMSG + O.namelen, true);
    if (s.nameView.length !== len) s.nameView = s.name.subarray(0, len);
    return s.nameView;
  }

  /** The kernel's arrival time of datagram i (µs since the epoch), 0 if not recorded. */
  arrival(i: number): number {
    const c = this.#controlView;
    if (!c) return 0;
    const h = i * MMSG;
    const len = Number(this.#hv.getBigUint64(h + O.controllen, true));
    const base = i * CONTROL_BYTES;
    for (let off = 0; off + 16 <= len;) {
      const cmsgLen = Number(c.getBigUint64(base + off, true));
      const level = c.getInt32(base + off + 8, true), type = c.getInt32(base + off + 12, true);
      if (cmsgLen < 16) return 0;
      if (level === SOL_SOCKET && type === SO_TIMESTAMPNS && cmsgLen >= 32) {
        const s = Number(c.getBigInt64(base + off + 16, true));
        const ns = Number(c.getBigInt64(base + off + 24, true));
        return s * 1e6 + ns / 1e3;
      }
      off += (cmsgLen + 7) & ~7;
    }
    return 0;
  }

  #closed = false;

  close(): void {
    if (!this.#closed) this.#lib.close();
    this.#closed = true;
  }
}
