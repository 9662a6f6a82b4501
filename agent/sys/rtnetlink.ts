// A few rtnetlink requests made in process through libc FFI, for the agent's hot path where an
// `ip` process each cost the agent a fork and an exec (the host side of every CNI ADD): set a
// link up or its IPv6 address generation off, add an address, replace a route, delete a link's
// multicast route or replace a permanent neighbour entry. Each request goes with NLM_F_ACK on a
// NETLINK_ROUTE socket of the caller's own network namespace, opened and closed per batch; the
// kernel handles rtnetlink requests while they are sent (off the event loop's thread), so the
// acknowledgements are read at once (a receive timeout guards against a kernel that does not
// answer). It decides nothing: a request the kernel refuses is an RtnetlinkError naming the
// request and the errno (unless the request tolerates that errno). libc stays open from the first
// call (opening it costs milliseconds, each request microseconds) until closeRtnetlink().

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  // On a thread of Deno's pool: the kernel does a request's work (under its rtnl lock, longer
  // with more links) while the agent's event loop goes on.
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize", nonblocking: true },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize", nonblocking: true },
  recv_now: { name: "recv", parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  if_nametoindex: { parameters: ["buffer"], result: "u32" },
  strerror: { parameters: ["i32"], result: "pointer" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

const AF_NETLINK = 16, SOCK_RAW = 3, SOCK_CLOEXEC = 0o2000000, NETLINK_ROUTE = 0;
const SOL_SOCKET = 1, SO_RCVTIMEO = 20, MSG_DONTWAIT = 0x40;
const NLMSG_ERROR = 2, RTM_NEWLINK = 16, RTM_NEWADDR = 20, RTM_NEWROUTE = 24, RTM_DELROUTE = 25;
const RTM_NEWNEIGH = 28;
const NLM_F_REQUEST = 1, NLM_F_ACK = 4, NLM_F_REPLACE = 0x100, NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
const IFF_UP = 1, IFA_ADDRESS = 1, IFA_LOCAL = 2, IFA_F_NODAD = 0x02;
const RTA_DST = 1, RTA_OIF = 4, RTA_PREFSRC = 7;
const RT_TABLE_MAIN = 254, RT_TABLE_LOCAL = 255, RTPROT_BOOT = 3, RT_SCOPE_UNIVERSE = 0;
const RT_SCOPE_LINK = 253, RTN_UNICAST = 1, RTN_MULTICAST = 5;
const AF_INET = 2, AF_INET6 = 10;
const IFLA_AF_SPEC = 26, IFLA_INET6_ADDR_GEN_MODE = 8, IN6_ADDR_GEN_MODE_NONE = 1;
const NLA_F_NESTED = 0x8000, NDA_DST = 1, NDA_LLADDR = 2, NUD_PERMANENT = 0x80;
const EAFNOSUPPORT = 97;
/** "No such process": what the kernel answers a route delete that finds no such route. */
export const ESRCH = 3;

export class RtnetlinkError extends Error {
  override name = "RtnetlinkError";
  /** The errno the kernel (or libc) answered, positive. */
  readonly errno: number;
  constructor(message: string, errno: number) {
    super(message);
    this.errno = errno;
  }
}

/** One request: what it does (for errors), and its message without the netlink header. */
export interface RtRequest {
  what: string;
  type: number;
  flags: number;
  body: Uint8Array;
  /** Errnos that mean "nothing to do here" for this request (not thrown). */
  tolerate?: readonly number[];
}

/** Bytes of an IPv4 or IPv6 address in text form (no prefix). */
function addrBytes(ip: string): { family: number; bytes: Uint8Array } {
  if (!ip.includes(":")) {
    const parts = ip.split(".").map(Number);
    if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
      throw new TypeError(`Invalid IPv4 address "${ip}"`);
    }
    return { family: AF_INET, bytes: Uint8Array.from(parts) };
  }
  const [head, tail, extra] = ip.split("::");
  if (extra !== undefined) throw new TypeError(`Invalid IPv6 address "${ip}"`);
  const groups = (s: string | undefined) => (s ? s.split(":") : []);
  const h = groups(head), t = groups(tail);
  const all = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
  if (all.length !== 8 || all.some((g) => !/^[0-9a-fA-F]{1,4}$/.test(g))) {
    throw new TypeError(`Invalid IPv6 address "${ip}"`);
  }
  const bytes = new Uint8Array(16);
  all.forEach((g, i) => {
    const v = parseInt(g, 16);
    bytes[2 * i] = v >> 8;
    bytes[2 * i + 1] = v & 0xff;
  });
  return { family: AF_INET6, bytes };
}

/** A message body: a fixed header, then attributes (type, payload) padded to 4 bytes. */
function body(head: Uint8Array, attrs: [number, Uint8Array][]): Uint8Array {
  const size = attrs.reduce((n, [, p]) => n + ((4 + p.length + 3) & ~3), head.length);
  const out = new Uint8Array(size);
  out.set(head);
  const view = new DataView(out.buffer);
  let at = head.length;
  for (const [type, payload] of attrs) {
    view.setUint16(at, 4 + payload.length, true);
    view.setUint16(at + 2, type, true);
    out.set(payload, at + 4);
    at += (4 + payload.length + 3) & ~3;
  }
  return out;
}

const u32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);

/** `ip link set dev <ifindex> up`. */
export function linkUp(ifindex: number, name: string): RtRequest {
  const head = new Uint8Array(16), v = new DataView(head.buffer);
  v.setInt32(4, ifindex, true); // ifi_family 0, ifi_type 0
  v.setUint32(8, IFF_UP, true);
  v.setUint32(12, IFF_UP, true); // ifi_change
  return { what: `link set ${name} up`, type: RTM_NEWLINK, flags: 0, body: head };
}

/**
 * `ip link set dev <ifindex> addrgenmode none`: the link makes no IPv6 link-local address (nor
 * its routes) when it comes up. Refused with EAFNOSUPPORT when the link has no IPv6 at all, which
 * is tolerated: there is nothing to turn off.
 */
export function linkAddrGenModeNone(ifindex: number, name: string): RtRequest {
  const head = new Uint8Array(16);
  new DataView(head.buffer).setInt32(4, ifindex, true);
  const mode = body(new Uint8Array(0), [[
    IFLA_INET6_ADDR_GEN_MODE,
    Uint8Array.of(IN6_ADDR_GEN_MODE_NONE),
  ]]);
  const inet6 = body(new Uint8Array(0), [[AF_INET6 | NLA_F_NESTED, mode]]);
  return {
    what: `link set ${name} addrgenmode none`,
    type: RTM_NEWLINK,
    flags: 0,
    body: body(head, [[IFLA_AF_SPEC | NLA_F_NESTED, inet6]]),
    tolerate: [EAFNOSUPPORT],
  };
}

/** `ip neigh replace <ip> lladdr <mac> dev <ifindex> nud permanent`. */
export function neighReplacePermanent(
  ifindex: number,
  o: { ip: string; mac: string; name: string },
): RtRequest {
  const { family, bytes } = addrBytes(o.ip);
  const mac = o.mac.split(":");
  if (mac.length !== 6 || mac.some((x) => !/^[0-9a-fA-F]{2}$/.test(x))) {
    throw new TypeError(`Invalid MAC address "${o.mac}"`);
  }
  const head = new Uint8Array(12), v = new DataView(head.buffer);
  head[0] = family;
  v.setInt32(4, ifindex, true);
  v.setUint16(8, NUD_PERMANENT, true);
  return {
    what: `neigh replace ${o.ip} lladdr ${o.mac} dev ${o.name} nud permanent`,
    type: RTM_NEWNEIGH,
    flags: NLM_F_CREATE | NLM_F_REPLACE,
    body: body(head, [[NDA_DST, bytes], [
      NDA_LLADDR,
      Uint8Array.from(mac, (x) => parseInt(x, 16)),
    ]]),
  };
}

/** `ip addr add <ip>/<prefix> dev <ifindex> [nodad]`. */
export function addrAdd(
  ifindex: number,
  o: { ip: string; prefix: number; nodad?: boolean; name: string },
): RtRequest {
  const { family, bytes } = addrBytes(o.ip);
  const link = family === AF_INET6 && bytes[0] === 0xfe && (bytes[1]! & 0xc0) === 0x80;
  const head = Uint8Array.of(
    family,
    o.prefix,
    o.nodad ? IFA_F_NODAD : 0,
    link ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE,
    ...u32(ifindex),
  );
  return {
    what: `addr add ${o.ip}/${o.prefix} dev ${o.name}${o.nodad ? " nodad" : ""}`,
    type: RTM_NEWADDR,
    flags: NLM_F_CREATE | NLM_F_EXCL,
    body: body(head, [[IFA_LOCAL, bytes], [IFA_ADDRESS, bytes]]),
  };
}

/** `ip route replace <dst>/<full length> dev <ifindex> [src <src>]` (scope link for IPv4). */
export function routeReplaceHost(
  ifindex: number,
  o: { dst: string; src?: string | undefined; name: string },
): RtRequest {
  const dst = addrBytes(o.dst);
  const bits = dst.bytes.length * 8;
  const head = Uint8Array.of(
    dst.family,
    bits,
    0,
    0,
    RT_TABLE_MAIN,
    RTPROT_BOOT,
    dst.family === AF_INET ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE,
    RTN_UNICAST,
    0,
    0,
    0,
    0,
  );
  const attrs: [number, Uint8Array][] = [[RTA_DST, dst.bytes], [RTA_OIF, u32(ifindex)]];
  if (o.src !== undefined) {
    const src = addrBytes(o.src);
    if (src.family !== dst.family) {
      throw new TypeError(`Route to "${o.dst}" with source "${o.src}": families differ`);
    }
    attrs.push([RTA_PREFSRC, src.bytes]);
  }
  return {
    what: `route replace ${o.dst}/${bits} dev ${o.name}${o.src ? ` src ${o.src}` : ""}`,
    type: RTM_NEWROUTE,
    flags: NLM_F_CREATE | NLM_F_REPLACE,
    body: body(head, attrs),
  };
}

/**
 * `ip -6 route del multicast ff00::/8 dev <ifindex> table local`: the route the kernel gives every
 * IPv6 link when it comes up. All links' such routes sit in one node of the table, and the kernel
 * walks them one by one to find the arriving link's for each multicast packet a link receives
 * (a pod's router solicitations, MLD reports): on a node with N endpoints, N routes per packet.
 * Absent (ESRCH: a link without IPv6, or already deleted) is tolerated.
 */
export function routeDelMulticast(ifindex: number, name: string): RtRequest {
  const head = Uint8Array.of(AF_INET6, 8, 0, 0, RT_TABLE_LOCAL, 0, 0, RTN_MULTICAST, 0, 0, 0, 0);
  const dst = new Uint8Array(16);
  dst[0] = 0xff;
  return {
    what: `route del multicast ff00::/8 dev ${name} table local`,
    type: RTM_DELROUTE,
    flags: 0,
    body: body(head, [[RTA_DST, dst], [RTA_OIF, u32(ifindex)]]),
    tolerate: [ESRCH],
  };
}

let seq = 0;
let lib: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;

function libc() {
  lib ??= Deno.dlopen("libc.so.6", SYMBOLS);
  return lib.symbols;
}

/** Closes libc (tests that must leave no handle behind; the next call opens it again). */
export function closeRtnetlink(): void {
  lib?.close();
  lib = undefined;
}

/**
 * Requests per datagram. The kernel queues every acknowledgement (a refused request's with the
 * request in it) in the socket's receive buffer before the first is read, and drops them past its
 * size (212,992 bytes by default): in a scratch netns 256 route deletes answered ESRCH came back,
 * 400 did not (the receive then fails, "No answer").
 */
export const RTNL_BATCH_MAX = 128;

/**
 * Sends the requests in one datagram (one hop to Deno's pool) per RTNL_BATCH_MAX: the kernel
 * carries them out in order while it is sent, a refused one not stopping the next, and queues one
 * acknowledgement each; throws an RtnetlinkError for the first refused, in request order, once
 * every datagram was sent. Returns each request's answer: 0, or the errno it tolerated.
 */
export async function rtnetlink(requests: readonly RtRequest[]): Promise<number[]> {
  if (requests.length <= RTNL_BATCH_MAX) return await datagram(requests);
  const answers: number[] = [];
  let refused: unknown;
  for (let at = 0; at < requests.length; at += RTNL_BATCH_MAX) {
    try {
      answers.push(...await datagram(requests.slice(at, at + RTNL_BATCH_MAX)));
    } catch (err) {
      refused ??= err;
    }
  }
  if (refused !== undefined) throw refused;
  return answers;
}

async function datagram(requests: readonly RtRequest[]): Promise<number[]> {
  const c = libc();
  const errno = () => new Deno.UnsafePointerView(c.__errno_location()!).getInt32();
  const text = (e: number) => {
    const p = c.strerror(e);
    return p ? new Deno.UnsafePointerView(p).getCString() : `errno ${e}`;
  };
  const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  try {
    if (fd < 0) {
      const e = errno();
      throw new RtnetlinkError(`Cannot open a netlink socket: ${text(e)}`, e);
    }
    const timeout = new BigInt64Array([2n, 0n]); // struct timeval: 2 s
    c.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, new Uint8Array(timeout.buffer), 16);
    const msg = new Uint8Array(requests.reduce((n, r) => n + 16 + r.body.length, 0));
    const head = new DataView(msg.buffer);
    const ids = new Map<number, number>(); // sequence number → request index
    let at = 0;
    requests.forEach((r, i) => {
      const id = seq = (seq + 1) >>> 0;
      ids.set(id, i);
      head.setUint32(at, 16 + r.body.length, true);
      head.setUint16(at + 4, r.type, true);
      head.setUint16(at + 6, NLM_F_REQUEST | NLM_F_ACK | r.flags, true);
      head.setUint32(at + 8, id, true);
      msg.set(r.body, at + 16);
      at += 16 + r.body.length; // bodies are multiples of 4 bytes
    });
    // errno belongs to the pool's thread: a failed send or receive says only that it failed.
    if (Number(await c.send(fd, msg, BigInt(msg.length), 0)) !== msg.length) {
      throw new RtnetlinkError(`Cannot send "${requests[0]?.what}" to the kernel`, 0);
    }
    const answer = new Uint8Array(4096), view = new DataView(answer.buffer);
    const errors = new Array<number | undefined>(requests.length);
    for (let acked = 0; acked < requests.length;) {
      // Queued by the time send returned; waited for only if not (the receive timeout bounds it).
      let n = Number(c.recv_now(fd, answer, BigInt(answer.length), MSG_DONTWAIT));
      if (n < 0) n = Number(await c.recv(fd, answer, BigInt(answer.length), 0));
      if (n < 0) throw new RtnetlinkError("No answer to a request from the kernel", 0);
      // Acknowledgements: NLMSG_ERROR with error 0, or -errno, and the request's sequence number.
      for (let off = 0; off + 20 <= n;) {
        const len = view.getUint32(off, true);
        const i = ids.get(view.getUint32(off + 8, true));
        if (view.getUint16(off + 4, true) === NLMSG_ERROR && i !== undefined) {
          if (errors[i] === undefined) acked++;
          errors[i] = -view.getInt32(off + 16, true);
        }
        if (len < 16) break;
        off += (len + 3) & ~3;
      }
    }
    const failed = errors.findIndex((e, i) => e !== 0 && !requests[i]!.tolerate?.includes(e!));
    if (failed >= 0) {
      const err = errors[failed]!;
      throw new RtnetlinkError(`Cannot ${requests[failed]!.what}: ${text(err)}`, err);
    }
    return errors as number[];
  } finally {
    if (fd >= 0) c.close(fd);
  }
}

/** The interface's index in the caller's network namespace, or undefined when there is none. */
export function ifIndex(name: string): number | undefined {
  return libc().if_nametoindex(new TextEncoder().encode(name + "\0")) || undefined;
}
