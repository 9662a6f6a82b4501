// Service records (flow 8): the validated, normalised shape of a ClusterIP service — a frontend
// (VIP:port/protocol) and its backends (ip:port, weight) — as stored under `cilia/services/<id>`
// and as the API and CLI show it. IPv4 or IPv6, one family per service (no NAT46): the backends
// and LoadBalancer addresses have the frontend's family; IPv6 addresses are kept in their
// canonical spelling (RFC 5952) and written `[ip]:port`. Pure: zod at the edge, deterministic
// output (backends sorted), safe to hash and diff. It writes nothing; manager.ts stores,
// lb_state.ts plans the maps.
import { z } from "zod";
import { formatIP, parseIPv4, parseIPv6, parsePrefix } from "../datapath/_addr.ts";

/** The most backends one service may have (each is a map entry, and a slot at least). */
export const MAX_BACKENDS = 10_000;
/** Service ids are the datapath's reverse-NAT ids (u16, 0 = none). */
export const MAX_SERVICE_ID = 65535;

/** 4 or 6 for an address, undefined for anything else. */
export function ipFamily(ip: string): 4 | 6 | undefined {
  return parseIPv4(ip) ? 4 : parseIPv6(ip) ? 6 : undefined;
}

/** IPv4 as given; IPv6 in its one canonical spelling ("fd00:96:0::010" → "fd00:96::10"). */
const canonicalIp = (ip: string) => {
  const v6 = parseIPv4(ip) ? undefined : parseIPv6(ip);
  return v6 ? formatIP(6, v6) : ip;
};

const ipAddr = (what: string) =>
  z.string().refine((s) => ipFamily(s) !== undefined, {
    message: `Invalid ${what}: expected an IPv4 or IPv6 address`,
  }).transform(canonicalIp);
const port = z.number().int().min(1, "Invalid port: expected 1-65535").max(
  65535,
  "Invalid port: expected 1-65535",
);

const labelMap = (what: string) =>
  z.record(
    z.string().min(1, `Invalid ${what}: empty label key`).max(
      317,
      `Invalid ${what}: label key longer than 317 characters`,
    ),
    z.string().max(63, `Invalid ${what}: label value longer than 63 characters`),
  );

export const BackendSchema = z.strictObject({
  ip: ipAddr("backend address"),
  port,
  weight: z.number().int().min(1).max(100).default(1),
  /** Finishing its connections: no new ones (EndpointSlice `conditions.terminating`). */
  terminating: z.boolean().optional(),
});

/** Kubernetes' default sessionAffinityConfig.clientIP.timeoutSeconds (3 h), and its maximum. */
export const DEFAULT_AFFINITY_TIMEOUT = 10800;
export const MAX_AFFINITY_TIMEOUT = 86400;

export const ServiceInputSchema = z.strictObject({
  id: z.number().int().min(1).max(MAX_SERVICE_ID).optional(),
  /** "namespace/name" of the Kubernetes Service it came from (or a user's name). */
  name: z.string().regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?\/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, {
    message: 'Invalid name: expected "namespace/name" (Kubernetes names)',
  }).optional(),
  /** NodePort and LoadBalancer frontends are served on the node's underlay (bpf/lib/nodeport.h). */
  type: z.enum(["ClusterIP", "NodePort", "LoadBalancer"], {
    message: 'Invalid type: expected "ClusterIP", "NodePort" or "LoadBalancer"',
  }).default("ClusterIP"),
  /** NodePort/LoadBalancer: the port on every node's IP (default: the lowest free in range). */
  nodePort: port.optional(),
  /** LoadBalancer: addresses outside clients use with the frontend port. */
  loadBalancerIPs: z.array(ipAddr("LoadBalancer address")).max(16, "At most 16 addresses")
    .optional(),
  frontend: z.strictObject({
    ip: ipAddr("frontend address"),
    port,
    protocol: z.enum(["TCP", "UDP"], {
      message: 'Invalid protocol: expected "TCP" or "UDP"',
    }).default("TCP"),
  }),
  algorithm: z.enum(["random", "maglev"]).default("random"),
  /** ClientIP: a client's new connections go to its last backend until the timeout (lb.h 6.). */
  sessionAffinity: z.enum(["None", "ClientIP"], {
    message: 'Invalid sessionAffinity: expected "None" or "ClientIP"',
  }).optional(),
  /** Seconds since the client's last new connection (ClientIP only; default 10800). */
  affinityTimeoutSeconds: z.number().int().min(
    1,
    "Invalid affinityTimeoutSeconds: expected 1-86400",
  )
    .max(MAX_AFFINITY_TIMEOUT, "Invalid affinityTimeoutSeconds: expected 1-86400").optional(),
  backends: z.array(BackendSchema).max(MAX_BACKENDS, `At most ${MAX_BACKENDS} backends`),
  /** The Kubernetes Service's pod selector (none: a selector-less service); for toServices. */
  selector: labelMap("selector").optional(),
  /** The Kubernetes Service's own labels (what `k8sServiceSelector` matches). */
  labels: labelMap("labels").optional(),
}).superRefine((s, ctx) => {
  if (s.affinityTimeoutSeconds !== undefined && s.sessionAffinity !== "ClientIP") {
    ctx.addIssue({
      code: "custom",
      path: ["affinityTimeoutSeconds"],
      message: 'Invalid affinityTimeoutSeconds: only with sessionAffinity "ClientIP"',
    });
  }
  if (s.nodePort !== undefined && s.type === "ClusterIP") {
    ctx.addIssue({
      code: "custom",
      path: ["nodePort"],
      message: 'Invalid nodePort: only a "NodePort" or "LoadBalancer" service has one',
    });
  }
  if (s.loadBalancerIPs !== undefined && s.type !== "LoadBalancer") {
    ctx.addIssue({
      code: "custom",
      path: ["loadBalancerIPs"],
      message: 'Invalid loadBalancerIPs: only a "LoadBalancer" service has them',
    });
  }
  // One family per service: the datapath translates addresses, not families (lb.h 1.).
  const family = ipFamily(s.frontend.ip);
  const mixed = (path: (string | number)[], what: string, ip: string) => {
    if (ipFamily(ip) === family) return;
    ctx.addIssue({
      code: "custom",
      path,
      message: `Invalid ${what} "${ip}": an IPv${ipFamily(ip)} address for the IPv${family} ` +
        `frontend "${s.frontend.ip}" (a service has one family)`,
    });
  };
  s.backends.forEach((b, i) => mixed(["backends", i, "ip"], `backends[${i}].ip`, b.ip));
  s.loadBalancerIPs?.forEach((ip, i) => mixed(["loadBalancerIPs", i], `loadBalancerIPs[${i}]`, ip));
});

export type ServiceInput = z.input<typeof ServiceInputSchema>;
export type Backend = z.output<typeof BackendSchema>;
export type ServiceSpec = Omit<z.output<typeof ServiceInputSchema>, "id"> & { id: number };

/** "10.0.0.1:80", "[fd00::1]:80". */
export const hostPort = (ip: string, port: number): string =>
  ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;

export const frontendText = (s: Pick<ServiceSpec, "frontend">): string =>
  `${hostPort(s.frontend.ip, s.frontend.port)}/${s.frontend.protocol}`;

export const backendText = (b: Pick<Backend, "ip" | "port">): string => hostPort(b.ip, b.port);

/** Sorted backends, duplicates refused: one spelling per service. */
export function normaliseService(s: ServiceSpec): ServiceSpec {
  const seen = new Set<string>();
  for (const [i, b] of s.backends.entries()) {
    const k = backendText(b);
    if (seen.has(k)) throw new RangeError(`Duplicate backend "${k}" at backends[${i}]`);
    seen.add(k);
  }
  const backends = [...s.backends].sort((a, b) => compareIp(a.ip, b.ip) || a.port - b.port).map((
    { terminating, ...b },
  ) => terminating ? { ...b, terminating } : b);
  // One spelling: no affinity is no field; ClientIP always carries its timeout.
  const { sessionAffinity, affinityTimeoutSeconds, ...rest } = s;
  const affinity = sessionAffinity === "ClientIP"
    ? {
      sessionAffinity,
      affinityTimeoutSeconds: affinityTimeoutSeconds ?? DEFAULT_AFFINITY_TIMEOUT,
    }
    : {};
  return { ...rest, ...affinity, backends };
}

export function ipNumber(ip: string): number {
  const b = parseIPv4(ip)!;
  return ((b[0]! << 24) >>> 0) + (b[1]! << 16) + (b[2]! << 8) + b[3]!;
}

/** Address order: IPv4 before IPv6, then numerically (byte by byte). */
export function compareIp(a: string, b: string): number {
  const fa = ipFamily(a) ?? 0, fb = ipFamily(b) ?? 0;
  if (fa !== fb) return fa - fb;
  if (fa === 4) return ipNumber(a) - ipNumber(b);
  const x = parseIPv6(a) ?? new Uint8Array(16), y = parseIPv6(b) ?? new Uint8Array(16);
  for (let i = 0; i < 16; i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
  return 0;
}

/** Is ip inside cidr ("10.200.0.0/24", "fd00:200::/64")? false across families or when malformed. */
export function inCidr(ip: string, cidr: string): boolean {
  let net, addr;
  try {
    net = parsePrefix(cidr);
    addr = parsePrefix(ip);
  } catch {
    return false;
  }
  if (net.family !== addr.family || addr.prefixLen !== (addr.family === 4 ? 32 : 128)) {
    return false;
  }
  for (let bit = 0; bit < net.prefixLen; bit++) {
    const m = 0x80 >> (bit & 7);
    if ((net.addr[bit >> 3]! & m) !== (addr.addr[bit >> 3]! & m)) return false;
  }
  return true;
}
