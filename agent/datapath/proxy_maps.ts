// The L7 proxy's side of bpf/lib/proxy.h: it writes the node's proxy address into
// cilia_proxy_cfg, reads a redirected connection's original destination from cilia_proxy_orig,
// and writes (and later deletes) the client's address for an upstream connection into
// cilia_proxy_nat before that connection is made. Lookups are per accepted connection, so they go
// through FFI (one syscall), not bpftool. It decides nothing: the proxy asks the engine.
// Addresses are IPv4 or IPv6 text; the maps hold 16 bytes and the family.
import { encode, type Layout, LAYOUTS } from "./codecs.ts";
import { formatIP, parseIPv4, parseIPv6 } from "./_addr.ts";
import { acquire, closeFd, mapDelete, mapLookupInto, mapUpdate, objGet, release } from "./ffi.ts";

export interface OrigDestination {
  /** The server the client dialled. */
  ip: string;
  port: number;
  /** The endpoint and direction (DIR_INGRESS 1 | DIR_EGRESS 2) whose policy redirected. */
  epId: number;
  dir: number;
  srcIdentity: number;
  dstIdentity: number;
  cookie: number;
}

export interface UpstreamNat {
  server: { ip: string; port: number };
  localPort: number;
  clientIp: string;
  identity: number;
  /** The endpoint and DIR_* whose policy the proxy judged (the kernel skips that redirect). */
  epId: number;
  dir: number;
}

export const ip4Bytes = (ip: string): Uint8Array => {
  const parts = ip.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !(p >= 0 && p <= 255))) {
    throw new TypeError(`Invalid IPv4 address "${ip}"`);
  }
  return new Uint8Array(parts);
};

/** An address as the proxy maps hold it: 16 bytes (IPv4 in the first 4) and its family. */
function addr16(ip: string): { bytes: Uint8Array; family: 4 | 6 } {
  const v4 = parseIPv4(ip);
  const v6 = v4 ? undefined : parseIPv6(ip);
  if (!v4 && !v6) throw new TypeError(`Invalid IP address "${ip}": expected IPv4 or IPv6`);
  const bytes = new Uint8Array(16);
  bytes.set(v4 ?? v6!);
  return { bytes, family: v4 ? 4 : 6 };
}

/** A field's offset in a layout (the layouts are checked against the object's BTF). */
const at = (l: Layout, name: string): number => {
  const f = l.fields.find((f) => f.name === name);
  if (!f) throw new Error(`No field "${name}" in "${l.struct}"`);
  return f.offset;
};
const OK = LAYOUTS.proxyOrigKey, OV = LAYOUTS.proxyOrigValue;
const OFF = {
  clientIp: at(OK, "client_ip"),
  clientPort: at(OK, "client_port"),
  proxyPort: at(OK, "proxy_port"),
  family: at(OK, "family"),
  origIp: at(OV, "orig_ip"),
  origPort: at(OV, "orig_port"),
  epId: at(OV, "ep_id"),
  dir: at(OV, "dir"),
  srcIdentity: at(OV, "src_identity"),
  dstIdentity: at(OV, "dst_identity"),
  cookie: at(OV, "cookie"),
};

export class ProxyMaps {
  readonly #fds: { cfg: number; orig: number; nat: number };
  /**
   * original() is asked per accepted connection and per DNS datagram: its key is written into
   * one buffer and parsed client addresses are remembered (bounded), so the per-datagram path
   * parses and allocates little.
   */
  readonly #origKey = new Uint8Array(OK.size);
  readonly #origKeyView = new DataView(this.#origKey.buffer);
  readonly #clients = new Map<string, { bytes: Uint8Array; family: 4 | 6 }>();
  /**
   * The lookup's value buffer, and the value the last answer was made from with that answer: a
   * client asking again (a DNS datagram per query) gets the same frozen object, and nothing is
   * allocated.
   */
  readonly #origValue = new Uint8Array(OV.size);
  readonly #origPrev = new Uint8Array(OV.size);
  #origMade: { family: number; o: OrigDestination } | undefined;

  /** The pinned maps' paths (a Worker opens its own fds on them). */
  readonly pins: { cfg: string; orig: string; nat: string };

  constructor(pins: { cfg: string; orig: string; nat: string }) {
    this.pins = pins;
    acquire();
    const opened: number[] = [];
    try {
      for (const p of [pins.cfg, pins.orig, pins.nat]) opened.push(objGet(p));
    } catch (err) {
      opened.forEach(closeFd);
      release();
      throw err;
    }
    this.#fds = { cfg: opened[0]!, orig: opened[1]!, nat: opened[2]! };
  }

  /** The proxy's address and the device ingress redirects enter on; gateway "" = no proxy. */
  configure(
    c: { gateway: string; gateway6?: string; hostIfindex: number; hostMac: Uint8Array },
  ): void {
    const value = encode(LAYOUTS.proxyCfg, {
      gw_ipv4: c.gateway ? ip4Bytes(c.gateway) : new Uint8Array(4),
      host_ifindex: c.hostIfindex,
      host_mac: c.hostMac,
      gw_ipv6: c.gateway6 ? addr16(c.gateway6).bytes : new Uint8Array(16),
    });
    const rc = mapUpdate(this.#fds.cfg, new Uint8Array(4), value);
    if (rc !== 0) throw new Error(`Cannot write "cilia_proxy_cfg": error ${-rc}`);
  }

  /** The original destination of an accepted connection, or undefined (fail closed). */
  original(clientIp: string, clientPort: number, proxyPort: number): OrigDestination | undefined {
    let client = this.#clients.get(clientIp);
    if (!client) {
      client = addr16(clientIp);
      if (this.#clients.size >= 4096) this.#clients.clear();
      this.#clients.set(clientIp, client);
    }
    const key = this.#origKey, kv = this.#origKeyView;
    key.set(client.bytes, OFF.clientIp);
    kv.setUint16(OFF.clientPort, clientPort, false);
    kv.setUint16(OFF.proxyPort, proxyPort, false);
    kv.setUint8(OFF.family, client.family);
    const raw = this.#origValue;
    if (!mapLookupInto(this.#fds.orig, key, raw)) return undefined;
    const made = this.#origMade, prev = this.#origPrev;
    if (made?.family === client.family) {
      let i = 0;
      while (i < raw.length && raw[i] === prev[i]) i++;
      if (i === raw.length) return made.o;
    }
    const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const o = OFF.origIp;
    const out: OrigDestination = Object.freeze({
      ip: client.family === 4
        ? `${raw[o]}.${raw[o + 1]}.${raw[o + 2]}.${raw[o + 3]}`
        : formatIP(6, raw.subarray(o, o + 16)),
      port: v.getUint16(OFF.origPort, false),
      epId: v.getUint16(OFF.epId, true),
      dir: v.getUint8(OFF.dir),
      srcIdentity: v.getUint32(OFF.srcIdentity, true),
      dstIdentity: v.getUint32(OFF.dstIdentity, true),
      cookie: v.getUint32(OFF.cookie, true),
    });
    prev.set(raw);
    this.#origMade = { family: client.family, o: out };
    return out;
  }

  #natKey(n: { server: { ip: string; port: number }; localPort: number }): Uint8Array {
    const server = addr16(n.server.ip);
    return encode(LAYOUTS.proxyNatKey, {
      server_ip: server.bytes,
      server_port: n.server.port,
      local_port: n.localPort,
      family: server.family,
    });
  }

  /** Must succeed before the upstream connect: the kernel puts the client's address on it. */
  writeNat(n: UpstreamNat & { ingressEpId?: number }): void {
    const value = encode(LAYOUTS.proxyNatValue, {
      client_ip: addr16(n.clientIp).bytes,
      identity: n.identity,
      ep_id: n.epId,
      dir: n.dir,
      ingress_ep_id: n.ingressEpId ?? 0,
    });
    const rc = mapUpdate(this.#fds.nat, this.#natKey(n), value);
    if (rc !== 0) throw new Error(`Cannot write "cilia_proxy_nat": error ${-rc}`);
  }

  deleteNat(n: { server: { ip: string; port: number }; localPort: number }): void {
    mapDelete(this.#fds.nat, this.#natKey(n));
  }

  close(): void {
    for (const fd of Object.values(this.#fds)) closeFd(fd);
    release();
  }
}
