// Plans the service maps of bpf/lib/lb.h from service records: the whole wanted content of
// cilia_lb_services, _slots, _backends, _revnat and _affinity_match, diffed against what was
// written, as writes in a safe order (new backends and slots before the services that point at
// them; deletes of services before the slots and backends they used). Backend ids are stable per address while a
// backend is in use (conntrack remembers them), and are read back after a restart (restore()).
// IPv4 and IPv6 share every map: 16-byte addresses (IPv4 in the first 4) with a family field.
// heldPairs() names the (frontend, backend) pairs the maps hold (after restore(): a previous
// agent's), which socket termination compares the first write of a start with.
// Pure: no I/O; KernelSink does the writing and calls commit() only after it succeeded.
import { decode, encode, LAYOUTS, num } from "../datapath/codecs.ts";
import { formatIP, parseIPv4, parseIPv6 } from "../datapath/_addr.ts";
import type { MapUpdate } from "../datapath/map_writer.ts";
import { backendText, hostPort, ipFamily, type ServiceSpec } from "./spec.ts";
import { maglevTable, weightedSlots } from "./maglev.ts";
import type { RemovedBackend } from "./manager.ts";

export const LB_MAPS = [
  "cilia_lb_services",
  "cilia_lb_slots",
  "cilia_lb_backends",
  "cilia_lb_revnat",
  "cilia_lb_affinity_match",
] as const;
export type LbMap = typeof LB_MAPS[number];

export interface LbWrite {
  map: LbMap;
  updates: MapUpdate[];
  deletes: Uint8Array[];
}

const PROTO = { TCP: 6, UDP: 17 } as const;
// Map contents are kept as hex strings (cheap to compare and diff); 10,000 services are ~60,000
// entries, so these two stay allocation-light.
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));
const hex = (b: Uint8Array) => {
  let s = "";
  for (let i = 0; i < b.length; i++) s += HEX[b[i]!];
  return s;
};
const unhex = (h: string) => {
  const out = new Uint8Array(h.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
};
const addr16 = (ip: string) => {
  const a = new Uint8Array(16);
  a.set(parseIPv4(ip) ?? parseIPv6(ip)!);
  return a;
};
/** The map fields of an address: {addr, family}. */
const addrOf = (ip: string) => ({ addr: addr16(ip), family: ipFamily(ip) ?? 4 });

type Content = Map<string, string>;

/** lb.h's LB_SVC_F_AFFINITY: sessionAffinity ClientIP (cilia_lb_affinity_match holds the rest). */
export const LB_SVC_F_AFFINITY = 1 << 0;

/** lb.h's LB_SVC_F_EXTERNAL: a frontend for clients outside the cluster. */
export const LB_SVC_F_EXTERNAL = 1 << 7;

/** [address, port] of a service's NodePort (on each node address) and LoadBalancer frontends. */
export function externalFrontends(
  s: ServiceSpec,
  nodeAddresses: readonly string[],
): [string, number][] {
  const out: [string, number][] = [];
  if (s.type !== "ClusterIP" && s.nodePort) {
    const family = ipFamily(s.frontend.ip);
    for (const ip of nodeAddresses) if (ipFamily(ip) === family) out.push([ip, s.nodePort]);
  }
  for (const ip of s.loadBalancerIPs ?? []) out.push([ip, s.frontend.port]);
  return out;
}

export class LbState {
  readonly #written = new Map<LbMap, Content>(LB_MAPS.map((m) => [m, new Map()]));
  /** "ip:port/proto" → backend id. */
  #ids = new Map<string, number>();

  /** What the kernel holds (a previous agent's writes): taken as written; ids are kept. */
  restore(map: LbMap, entries: readonly { key: Uint8Array; value: Uint8Array }[]): void {
    const c = this.#written.get(map)!;
    for (const e of entries) c.set(hex(e.key), hex(e.value));
    if (map !== "cilia_lb_backends") return;
    for (const e of entries) {
      const id = num(decode(LAYOUTS.lbBackendKey, e.key).backend_id);
      const v = decode(LAYOUTS.lbBackend, e.value);
      const ip = formatIP(num(v.family), v.addr as Uint8Array);
      this.#ids.set(`${hostPort(ip, num(v.port))}/${num(v.proto)}`, id);
    }
  }

  /**
   * The (frontend, backend) pairs of what is written (after restore(): what a previous agent
   * left), for socket termination after a restart. A backend with a slot pairs with its service's
   * own frontend (not its NodePort / LoadBalancer ones: the cgroup hooks answer those as the tc
   * path does). A terminating backend has no slot, so the maps do not say whose it was: it pairs
   * with every frontend of its protocol, marked `guessed` — a superset, harmless because a socket
   * ends only when the socket LB translated it for that very pair (bpf/lib/sock_term.h 1.).
   */
  heldPairs(): RemovedBackend[] {
    const w = (m: LbMap) => [...this.#written.get(m)!].map(([k, v]) => [unhex(k), unhex(v)]);
    const backends = new Map<number, { ip: string; port: number; proto: number }>();
    for (const [k, v] of w("cilia_lb_backends")) {
      const b = decode(LAYOUTS.lbBackend, v!);
      backends.set(num(decode(LAYOUTS.lbBackendKey, k!).backend_id), {
        ip: formatIP(num(b.family), b.addr as Uint8Array),
        port: num(b.port),
        proto: num(b.proto),
      });
    }
    const bySvc = new Map<number, Set<number>>(), slotted = new Set<number>();
    for (const [k, v] of w("cilia_lb_slots")) {
      const svc = num(decode(LAYOUTS.lbSlotKey, k!).svc_id);
      const id = num(decode(LAYOUTS.lbSlotValue, v!).backend_id);
      bySvc.set(svc, (bySvc.get(svc) ?? new Set()).add(id));
      slotted.add(id);
    }
    const out: RemovedBackend[] = [];
    for (const [k, v] of w("cilia_lb_services")) {
      const f = decode(LAYOUTS.lbServiceKey, k!), sv = decode(LAYOUTS.lbServiceValue, v!);
      const protocol = num(f.proto) === PROTO.TCP ? "TCP" : num(f.proto) === PROTO.UDP ? "UDP" : "";
      if (protocol === "" || (num(sv.flags) & LB_SVC_F_EXTERNAL) !== 0) continue;
      const frontend = { ip: formatIP(num(f.family), f.addr as Uint8Array), port: num(f.port) };
      const own = bySvc.get(num(sv.svc_id)) ?? new Set<number>();
      for (const [id, b] of backends) {
        if (b.proto !== num(f.proto) || (slotted.has(id) && !own.has(id))) continue;
        out.push({
          frontend: { ...frontend, protocol },
          backend: { ip: b.ip, port: b.port },
          ...(slotted.has(id) ? {} : { guessed: true as const }),
        });
      }
    }
    return out;
  }

  /** The backend id of an address in use, if any (for listings). */
  backendId(ip: string, port: number, protocol: "TCP" | "UDP"): number | undefined {
    return this.#ids.get(`${hostPort(ip, port)}/${PROTO[protocol]}`);
  }

  /** The writes that turn what was written into `services`; commit() once they succeeded. */
  plan(
    services: readonly ServiceSpec[],
    opts: { nodePortAddresses?: readonly string[] } = {},
  ): { writes: LbWrite[]; commit(): void } {
    const ids = this.#allocate(services);
    const want = new Map<LbMap, Content>(LB_MAPS.map((m) => [m, new Map()]));
    const put = (m: LbMap, k: Uint8Array, v: Uint8Array) => want.get(m)!.set(hex(k), hex(v));
    for (const s of services) {
      const proto = PROTO[s.frontend.protocol];
      // Terminating backends keep their entry (established connections) but get no slot and no
      // affinity (lb.h 7.).
      const active = s.backends.filter((b) => !b.terminating);
      const named = active.map((b) => ({ name: backendText(b), weight: b.weight }));
      const table = s.algorithm === "maglev" ? maglevTable(named) : weightedSlots(named);
      for (const b of s.backends) {
        put(
          "cilia_lb_backends",
          encode(LAYOUTS.lbBackendKey, { backend_id: ids.get(`${backendText(b)}/${proto}`)! }),
          encode(LAYOUTS.lbBackend, { ...addrOf(b.ip), port: b.port, proto }),
        );
      }
      table.forEach((bi, slot) => {
        const b = active[bi]!;
        put(
          "cilia_lb_slots",
          encode(LAYOUTS.lbSlotKey, { svc_id: s.id, slot }),
          encode(LAYOUTS.lbSlotValue, { backend_id: ids.get(`${backendText(b)}/${proto}`)! }),
        );
      });
      put(
        "cilia_lb_revnat",
        encode(LAYOUTS.lbRevnatKey, { svc_id: s.id }),
        encode(LAYOUTS.lbRevnat, { ...addrOf(s.frontend.ip), port: s.frontend.port }),
      );
      put(
        "cilia_lb_services",
        encode(LAYOUTS.lbServiceKey, { ...addrOf(s.frontend.ip), port: s.frontend.port, proto }),
        encode(LAYOUTS.lbServiceValue, {
          slots: table.length,
          svc_id: s.id,
          flags: s.sessionAffinity === "ClientIP" ? LB_SVC_F_AFFINITY : 0,
        }),
      );
      if (s.sessionAffinity === "ClientIP") {
        for (const b of active) {
          put(
            "cilia_lb_affinity_match",
            encode(LAYOUTS.lbAffinityMatchKey, {
              backend_id: ids.get(`${backendText(b)}/${proto}`)!,
              svc_id: s.id,
            }),
            encode(LAYOUTS.lbAffinityMatch, { timeout_s: s.affinityTimeoutSeconds! }),
          );
        }
      }
      // NodePort / LoadBalancer frontends: the same slots, served on the underlay (nodeport.h).
      for (const [ip, port] of externalFrontends(s, opts.nodePortAddresses ?? [])) {
        put(
          "cilia_lb_services",
          encode(LAYOUTS.lbServiceKey, { ...addrOf(ip), port, proto }),
          encode(LAYOUTS.lbServiceValue, {
            slots: table.length,
            svc_id: s.id,
            flags: LB_SVC_F_EXTERNAL,
          }),
        );
      }
    }
    const diff = (m: LbMap) => {
      const have = this.#written.get(m)!, wanted = want.get(m)!;
      const updates = [...wanted].filter(([k, v]) => have.get(k) !== v)
        .map(([k, v]) => ({ key: unhex(k), value: unhex(v) }));
      const deletes = [...have.keys()].filter((k) => !wanted.has(k)).map(unhex);
      return { map: m, updates, deletes };
    };
    const d = Object.fromEntries(LB_MAPS.map((m) => [m, diff(m)])) as Record<LbMap, LbWrite>;
    const only = (w: LbWrite, part: "updates" | "deletes"): LbWrite => ({
      map: w.map,
      updates: part === "updates" ? w.updates : [],
      deletes: part === "deletes" ? w.deletes : [],
    });
    const writes = [
      only(d.cilia_lb_backends, "updates"),
      only(d.cilia_lb_slots, "updates"),
      only(d.cilia_lb_revnat, "updates"),
      only(d.cilia_lb_affinity_match, "updates"),
      d.cilia_lb_services,
      only(d.cilia_lb_affinity_match, "deletes"),
      only(d.cilia_lb_slots, "deletes"),
      only(d.cilia_lb_revnat, "deletes"),
      only(d.cilia_lb_backends, "deletes"),
    ].filter((w) => w.updates.length > 0 || w.deletes.length > 0);
    return {
      writes,
      commit: () => {
        for (const m of LB_MAPS) this.#written.set(m, want.get(m)!);
        this.#ids = ids;
      },
    };
  }

  /** Ids for every wanted backend: kept for addresses in use, the lowest free for new ones. */
  #allocate(services: readonly ServiceSpec[]): Map<string, number> {
    const wanted = new Set(
      services.flatMap((s) =>
        s.backends.map((b) => `${backendText(b)}/${PROTO[s.frontend.protocol]}`)
      ),
    );
    const ids = new Map([...this.#ids].filter(([k]) => wanted.has(k)));
    const used = new Set(ids.values());
    let next = 1;
    for (const k of [...wanted].sort()) {
      if (ids.has(k)) continue;
      while (used.has(next)) next++;
      ids.set(k, next);
      used.add(next);
    }
    return ids;
  }
}
