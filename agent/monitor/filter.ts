// Flow filters in Hubble's vocabulary (`--from-pod NS/NAME`, `--to-label k=v`, `--ip CIDR`,
// `--verdict DROPPED`, `--type drop`, `--port 80`, `--service NS/NAME|FRONTEND`, … and `--not`),
// parsed once and matched per flow. The agent's `/v1/flows` and `cilia observe --input-file` use
// this one implementation, so a saved file filters exactly as the live agent does. A criterion
// matches when any of its values does; a flow passes when every include criterion matches and no
// exclude criterion does. Bad values are errors that name what is accepted. This module is browser
// compatible.

import { parsePrefix, prefixContains } from "@cilia/policy-wasm";
import {
  dropReasonCode,
  dropReasonName,
  type Flow,
  FLOW_TYPES,
  FLOW_VERDICTS,
  type FlowEndpoint,
  flowL4,
  type FlowService,
} from "./flow.ts";

export const FILTER_FIELDS = [
  "from-pod",
  "to-pod",
  "pod",
  "from-label",
  "to-label",
  "label",
  "from-ip",
  "to-ip",
  "ip",
  "from-identity",
  "to-identity",
  "identity",
  "namespace",
  "verdict",
  "protocol",
  "port",
  "from-port",
  "to-port",
  "type",
  "drop-reason",
  "service",
] as const;
export type FilterField = (typeof FILTER_FIELDS)[number];

const PROTOCOLS = ["tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6"] as const;

type Test = (f: Flow) => boolean;
type Prefix = ReturnType<typeof parsePrefix>;

export interface Criterion {
  field: FilterField;
  values: string[];
}

export interface FlowFilter {
  include: Criterion[];
  exclude: Criterion[];
}

export class FilterError extends RangeError {
  override name = "FilterError";
}

const side = (f: Flow, which: "from" | "to" | "any"): FlowEndpoint[] =>
  which === "from" ? [f.source] : which === "to" ? [f.destination] : [f.source, f.destination];

function podTest(value: string, which: "from" | "to" | "any"): Test {
  const slash = value.indexOf("/");
  const ns = slash >= 0 ? value.slice(0, slash) : "default";
  const name = slash >= 0 ? value.slice(slash + 1) : value;
  if (ns === "" && name === "") throw new FilterError(`Invalid pod "${value}": expected NS/NAME`);
  return (f) =>
    side(f, which).some((e) =>
      e.namespace === ns && (name === "" || (e.pod_name ?? "").startsWith(name))
    );
}

/** `k=v,k2` (all must hold); keys match with or without a source prefix (`k8s:app`). */
function labelTest(value: string, which: "from" | "to" | "any"): Test {
  const reqs = value.split(",").map((r) => r.trim()).filter(Boolean).map((r) => {
    const eq = r.indexOf("=");
    const key = eq >= 0 ? r.slice(0, eq) : r;
    if (!/^[A-Za-z0-9_.:/-]+$/.test(key)) {
      throw new FilterError(`Invalid label selector "${value}": expected k=v[,k2=v2]`);
    }
    return { key, value: eq >= 0 ? r.slice(eq + 1) : undefined };
  });
  if (reqs.length === 0) throw new FilterError(`Invalid label selector "${value}": it is empty`);
  const has = (labels: string[], key: string, v: string | undefined) =>
    labels.some((l) => {
      const eq = l.indexOf("=");
      const k = eq >= 0 ? l.slice(0, eq) : l;
      const bare = k.slice(k.indexOf(":") + 1);
      if (k !== key && bare !== key) return false;
      return v === undefined || (eq >= 0 ? l.slice(eq + 1) : "") === v;
    });
  return (f) => side(f, which).some((e) => reqs.every((r) => has(e.labels, r.key, r.value)));
}

function ipTest(value: string, which: "from" | "to" | "any"): Test {
  let prefix: Prefix;
  try {
    prefix = parsePrefix(value);
  } catch {
    throw new FilterError(`Invalid IP or CIDR "${value}": expected e.g. 10.0.0.1 or 10.0.0.0/8`);
  }
  return (f) => {
    if (!f.IP) return false;
    const ips = which === "from"
      ? [f.IP.source]
      : which === "to"
      ? [f.IP.destination]
      : [f.IP.source, f.IP.destination];
    return ips.some((ip) => {
      try {
        return prefixContains(prefix, parsePrefix(ip));
      } catch {
        return false;
      }
    });
  };
}

/**
 * A flow through a service (destination_service or source_service) named `NS/NAME`, `NAME` (any
 * namespace), its frontend (`10.96.0.10:80/TCP`, `[fd00::10]:80`, `10.96.0.10:80`) or address.
 */
function serviceTest(value: string): Test {
  if (value === "") throw new FilterError(`Invalid service "": expected NS/NAME or a frontend`);
  const is = (s: FlowService | undefined) => {
    if (!s) return false;
    const fe = s.frontend, addr = fe.slice(0, fe.lastIndexOf(":")).replace(/^\[|\]$/g, "");
    return value === fe || value === fe.slice(0, fe.lastIndexOf("/")) || value === addr ||
      (s.name !== undefined && (value === s.name || value === `${s.namespace}/${s.name}`));
  };
  return (f) => is(f.destination_service) || is(f.source_service);
}

function numberOf(field: string, value: string, max: number): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > max) {
    throw new FilterError(`Invalid --${field} "${value}": expected a number from 0 to ${max}`);
  }
  return n;
}

function oneOf<T extends string>(field: string, value: string, list: readonly T[]): T {
  const hit = list.find((x) => x.toLowerCase() === value.toLowerCase());
  if (hit === undefined) {
    throw new FilterError(
      `Invalid --${field} "${value}": expected one of ${list.join(", ")}`,
    );
  }
  return hit;
}

function testOf(field: FilterField, value: string): Test {
  const which = field.startsWith("from-") ? "from" : field.startsWith("to-") ? "to" : "any";
  switch (field) {
    case "from-pod":
    case "to-pod":
    case "pod":
      return podTest(value, which);
    case "from-label":
    case "to-label":
    case "label":
      return labelTest(value, which);
    case "from-ip":
    case "to-ip":
    case "ip":
      return ipTest(value, which);
    case "from-identity":
    case "to-identity":
    case "identity": {
      const id = numberOf(field, value, 0xffffffff);
      return (f) => side(f, which).some((e) => e.identity === id);
    }
    case "namespace":
      return (f) => side(f, "any").some((e) => e.namespace === value);
    case "verdict": {
      const v = oneOf(field, value, FLOW_VERDICTS);
      return (f) => f.verdict === v;
    }
    case "type": {
      const t = oneOf(field, value, FLOW_TYPES);
      return (f) => f.cilia_type === t;
    }
    case "protocol": {
      const p = oneOf(field, value, PROTOCOLS);
      const want = p === "icmp" || p === "icmpv4" ? "ICMPv4" : p.toUpperCase();
      return (f) => flowL4(f).proto === (p === "icmpv6" ? "ICMPv6" : want);
    }
    case "port":
    case "from-port":
    case "to-port": {
      const port = numberOf(field, value, 65535);
      return (f) => {
        const l = flowL4(f);
        return (which !== "to" && l.sport === port) || (which !== "from" && l.dport === port);
      };
    }
    case "service":
      return serviceTest(value);
    case "drop-reason": {
      const code = dropReasonCode(value);
      if (code === undefined) {
        throw new FilterError(
          `Invalid drop-reason "${value}": expected a code (133) or a drop reason name ` +
            `(Hubble's POLICY_DENIED, or cilia's POLICY)`,
        );
      }
      const name = dropReasonName(code);
      // Flows from a Hubble file may carry only the enum name (drop_reason is deprecated there).
      return (f) =>
        f.drop_reason === code || (f.drop_reason === undefined && f.drop_reason_desc === name);
    }
  }
}

interface Compiled {
  include: Test[];
  exclude: Test[];
}

const compiledCache = new WeakMap<FlowFilter, Compiled>();

function compileCriterion(c: Criterion): Test {
  if (!(FILTER_FIELDS as readonly string[]).includes(c.field)) {
    throw new FilterError(
      `Unknown filter "${c.field}": expected one of ${FILTER_FIELDS.join(", ")}`,
    );
  }
  const tests = c.values.map((v) => testOf(c.field, v));
  return (f) => tests.some((t) => t(f));
}

/** Checks every value now (throws FilterError) and returns a matcher. */
export function compileFilter(filter: FlowFilter): (f: Flow) => boolean {
  const c = compiledCache.get(filter) ?? {
    include: filter.include.map(compileCriterion),
    exclude: filter.exclude.map(compileCriterion),
  };
  compiledCache.set(filter, c);
  return (f) => c.include.every((t) => t(f)) && !c.exclude.some((t) => t(f));
}

/** Adds `field=value` to a filter (repeating a field ORs its values). */
export function addCriterion(
  filter: FlowFilter,
  field: string,
  value: string,
  negate = false,
): void {
  if (!(FILTER_FIELDS as readonly string[]).includes(field)) {
    throw new FilterError(`Unknown filter "${field}": expected one of ${FILTER_FIELDS.join(", ")}`);
  }
  testOf(field as FilterField, value); // validates now
  const list = negate ? filter.exclude : filter.include;
  const hit = list.find((c) => c.field === field);
  if (hit) hit.values.push(value);
  else list.push({ field: field as FilterField, values: [value] });
}

export const emptyFilter = (): FlowFilter => ({ include: [], exclude: [] });

/** A filter from URL search params: `field=value` includes, `not.field=value` excludes. */
export function filterFromParams(params: URLSearchParams): FlowFilter {
  const filter = emptyFilter();
  for (const [k, v] of params) {
    if (["follow", "last", "since", "first"].includes(k)) continue;
    const negate = k.startsWith("not.");
    addCriterion(filter, negate ? k.slice(4) : k, v, negate);
  }
  return filter;
}

/** The filter as URL search params (the inverse of filterFromParams). */
export function filterToParams(filter: FlowFilter, params = new URLSearchParams()) {
  for (const c of filter.include) for (const v of c.values) params.append(c.field, v);
  for (const c of filter.exclude) for (const v of c.values) params.append(`not.${c.field}`, v);
  return params;
}
