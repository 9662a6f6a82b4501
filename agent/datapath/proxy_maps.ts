// The L7 proxy's side of bpf/lib/proxy.h: it writes the node's proxy address into
// cilia_proxy_cfg, reads a redirected connection's original destination from cilia_proxy_orig,
// and writes (and later deletes) the client's address for an upstream connection into
// cilia_proxy_nat before that connection is made. Lookups are per accepted connection, so they go
// through FFI (one syscall), not bpftool. It decides nothing: the proxy asks the engine.
// Addresses are IPv4 or IPv6 text; the maps hold 16 bytes and the family.
import { bytesOf, decode, encode, LAYOUTS, num } from "./codecs.ts";
import { formatIP, parseIPv4, parseIPv6 } from "./_addr.ts";
import { acquire, closeFd, mapDelete, mapLookup, mapUpdate, objGet, release } from "./ffi.ts";

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

export class ProxyMaps {
  readonly #fds: { cfg: number; orig: number; nat: number };

  constructor(pins: { cfg: string; orig: string; nat: string }) {
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
    const client = addr16(clientIp);
    const key = encode(LAYOUTS.proxyOrigKey, {
      client_ip: client.bytes,
      client_port: clientPort,
      proxy_port: proxyPort,
      family: client.family,
    });
    const raw = mapLookup(this.#fds.orig, key, LAYOUTS.proxyOrigValue.size);
    if (!raw) return undefined;
    const v = decode(LAYOUTS.proxyOrigValue, raw);
    return {
      ip: formatIP(client.family, bytesOf(v.orig_ip)),
      port: num(v.orig_port),
      epId: num(v.ep_id),
      dir: num(v.dir),
      srcIdentity: num(v.src_identity),
      dstIdentity: num(v.dst_identity),
      cookie: num(v.cookie),
    };
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
