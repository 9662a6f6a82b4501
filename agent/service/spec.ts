// Service records (flow 8): the validated, normalised shape of a ClusterIP service — a frontend
// (VIP:port/protocol) and its backends (ip:port, weight) — as stored under `cilia/services/<id>`
// and as the API and CLI show it. Pure: zod at the edge, deterministic output (backends sorted),
// safe to hash and diff. It writes nothing; manager.ts stores, lb_state.ts plans the maps.
import { z } from "zod";
import { parseIPv4 } from "../datapath/_addr.ts";

/** The most backends one service may have (each is a map entry, and a slot at least). */
export const MAX_BACKENDS = 10_000;
/** Service ids are the datapath's reverse-NAT ids (u16, 0 = none). */
export const MAX_SERVICE_ID = 65535;

const ipv4 = (what: string) =>
  z.string().refine((s) => parseIPv4(s) !== undefined, {
    message: `Invalid ${what}: expected an IPv4 address (IPv6 services are not supported yet)`,
  });
const port = z.number().int().min(1, "Invalid port: expected 1-65535").max(
  65535,
  "Invalid port: expected 1-65535",
);

export const BackendSchema = z.strictObject({
  ip: ipv4("backend address"),
  port,
  weight: z.number().int().min(1).max(100).default(1),
});

export const ServiceInputSchema = z.strictObject({
  id: z.number().int().min(1).max(MAX_SERVICE_ID).optional(),
  /** "namespace/name" of the Kubernetes Service it came from (or a user's name). */
  name: z.string().regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?\/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, {
    message: 'Invalid name: expected "namespace/name" (Kubernetes names)',
  }).optional(),
  type: z.literal("ClusterIP").default("ClusterIP"),
  frontend: z.strictObject({
    ip: ipv4("frontend address"),
    port,
    protocol: z.enum(["TCP", "UDP"], {
      message: 'Invalid protocol: expected "TCP" or "UDP"',
    }).default("TCP"),
  }),
  algorithm: z.enum(["random", "maglev"]).default("random"),
  backends: z.array(BackendSchema).max(MAX_BACKENDS, `At most ${MAX_BACKENDS} backends`),
});

export type ServiceInput = z.input<typeof ServiceInputSchema>;
export type Backend = z.output<typeof BackendSchema>;
export type ServiceSpec = Omit<z.output<typeof ServiceInputSchema>, "id"> & { id: number };

export const frontendText = (s: Pick<ServiceSpec, "frontend">): string =>
  `${s.frontend.ip}:${s.frontend.port}/${s.frontend.protocol}`;

export const backendText = (b: Pick<Backend, "ip" | "port">): string => `${b.ip}:${b.port}`;

/** Sorted backends, duplicates refused: one spelling per service. */
export function normaliseService(s: ServiceSpec): ServiceSpec {
  const seen = new Set<string>();
  for (const [i, b] of s.backends.entries()) {
    const k = backendText(b);
    if (seen.has(k)) throw new RangeError(`Duplicate backend "${k}" at backends[${i}]`);
    seen.add(k);
  }
  const backends = [...s.backends].sort((a, b) =>
    ipNumber(a.ip) - ipNumber(b.ip) || a.port - b.port
  );
  return { ...s, backends };
}

export function ipNumber(ip: string): number {
  const b = parseIPv4(ip)!;
  return ((b[0]! << 24) >>> 0) + (b[1]! << 16) + (b[2]! << 8) + b[3]!;
}

/** Is ip inside cidr ("10.200.0.0/24")? IPv4 only; false for anything else. */
export function inCidr(ip: string, cidr: string): boolean {
  const [net, bits] = cidr.split("/");
  if (!net || parseIPv4(net) === undefined || parseIPv4(ip) === undefined) return false;
  const n = Number(bits ?? 32);
  const mask = n === 0 ? 0 : (0xffffffff << (32 - n)) >>> 0;
  return ((ipNumber(ip) & mask) >>> 0) === ((ipNumber(net) & mask) >>> 0);
}
