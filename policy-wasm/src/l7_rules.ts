// Translation and validation of a PortRule (ports + L7 rules) and of ICMP rules into the IR,
// with Cilium's checks (POLICY-SEMANTICS §2.2): at most 40 ports; port 0 forbids L7; HTTP and
// Kafka need protocol TCP and are refused in host policies; DNS is egress only, on TCP/UDP/ANY,
// without ranges, and names its port; one L7 family per port; Kafka role XOR apiKey, int16
// apiVersion, topic syntax; HTTP regexes must compile; at most 40 ICMP fields per ICMP rule. Also
// the allow-all L7 rule that makes a default-allow entry's L7 rules observe-only (§9). This
// module is browser compatible.

import type { PathPart } from "./documents.ts";
import type { IssueSink } from "./issues.ts";
import type { Direction, EntrySpec, HttpRuleSpec, KafkaRuleSpec, L7Spec, PortSpec } from "./ir.ts";
import type { PortProtocol, PortRule } from "./schema.ts";
import type { z } from "zod";
import type { HttpRule, IcmpRule, KafkaRule } from "./schema.ts";
import {
  ICMPV4_TYPES,
  ICMPV6_TYPES,
  KAFKA_API_KEYS,
  KAFKA_ROLES,
  PORT_NAME,
  PROTOCOL_NUMBERS,
} from "./protocols.ts";
import { suggest } from "./suggest.ts";

/** Checks a regex with the engine; returns a message when it does not compile. */
export type RegexCheck = (pattern: string) => string | undefined;

export function translatePort(
  p: PortProtocol,
  sink: IssueSink,
  path: readonly PathPart[],
  defaultProtocol: "ANY" | "TCP",
): PortSpec | undefined {
  const proto = PROTOCOL_NUMBERS[p.protocol ?? defaultProtocol]!;
  const raw = p.port === undefined ? "0" : String(p.port).trim();
  if (/^[0-9]+$/.test(raw)) {
    const port = Number(raw);
    if (port > 65535) {
      sink.error(path, `Invalid port ${port}: expected 0-65535`, "port");
      return undefined;
    }
    let endPort = p.endPort ?? port;
    if (p.endPort !== undefined && p.endPort !== null) {
      if (p.endPort > 65535 || p.endPort < port) {
        sink.error(path, `Invalid endPort ${p.endPort}: expected ${port}-65535`, "endPort");
        return undefined;
      }
      if (port === 0) sink.error(path, "endPort needs a non-zero port", "endPort");
    }
    if (port === 0) endPort = 65535;
    return { proto, port, endPort };
  }
  if (!PORT_NAME.test(raw)) {
    sink.error(
      path,
      `Invalid port "${raw}": expected a number 0-65535 or a port name (letters, digits and single "-", at most 15 characters)`,
      "port",
    );
    return undefined;
  }
  if (p.endPort !== undefined && p.endPort !== null) {
    sink.warn(path, `endPort is ignored for the named port "${raw}"`, "endPort");
  }
  // Port names are case-insensitive (Cilium lower-cases them).
  return { proto, port: 0, endPort: 0, name: raw.toLowerCase() };
}

function headerRule(h: string): { name: string; value?: string } {
  const s = h.trim();
  const sp = s.indexOf(" ");
  if (sp < 0) return { name: s.replace(/:$/, "").toLowerCase() };
  return { name: s.slice(0, sp).replace(/:$/, "").toLowerCase(), value: s.slice(sp + 1).trim() };
}

function translateHttp(
  r: z.infer<typeof HttpRule>,
  sink: IssueSink,
  path: readonly PathPart[],
  check: RegexCheck | undefined,
): HttpRuleSpec {
  for (const field of ["method", "path", "host"] as const) {
    const v = r[field];
    const msg = v !== undefined && check ? check(v) : undefined;
    if (msg) sink.error(path, `Invalid ${field} regex "${v}": ${msg}`, field);
  }
  const headers = (r.headers ?? []).map(headerRule);
  headers.forEach((h, i) => {
    if (!h.name) sink.error([...path, "headers", i], "Expected a header name");
    const msg = h.value !== undefined && check ? check(h.value) : undefined;
    if (msg) sink.error([...path, "headers", i], `Invalid header value regex "${h.value}": ${msg}`);
  });
  return {
    ...(r.method !== undefined ? { method: r.method } : {}),
    ...(r.path !== undefined ? { path: r.path } : {}),
    ...(r.host !== undefined ? { host: r.host } : {}),
    headers,
    headerMatches: (r.headerMatches ?? []).map((m) => ({
      name: m.name.toLowerCase(),
      ...(m.value !== undefined ? { value: m.value } : {}),
      ...(m.secret ? { secret: true } : {}),
      ...(m.mismatch ? { mismatch: m.mismatch } : {}),
    })),
  };
}

const TOPIC = /^[a-zA-Z0-9._-]{1,255}$/;

function translateKafka(
  r: z.infer<typeof KafkaRule>,
  sink: IssueSink,
  path: readonly PathPart[],
): KafkaRuleSpec {
  if (r.role !== undefined && r.apiKey !== undefined) {
    sink.error(path, `Kafka "role" and "apiKey" are mutually exclusive`, "apiKey");
  }
  let apiKeys: number[] = [];
  if (r.role) apiKeys = [...KAFKA_ROLES[r.role]];
  if (r.apiKey !== undefined) {
    const k = KAFKA_API_KEYS[r.apiKey];
    if (k === undefined) {
      const hint = suggest(r.apiKey, Object.keys(KAFKA_API_KEYS));
      sink.error(
        path,
        `Unknown Kafka apiKey "${r.apiKey}"${hint ? `: did you mean "${hint}"?` : ""}`,
        "apiKey",
      );
    } else apiKeys = [k];
  }
  let apiVersion: number | undefined;
  if (r.apiVersion !== undefined) {
    const s = String(r.apiVersion).trim();
    const v = Number(s);
    if (!/^-?[0-9]+$/.test(s) || v < -32768 || v > 32767) {
      sink.error(path, `Invalid Kafka apiVersion "${s}": expected a 16-bit integer`, "apiVersion");
    } else apiVersion = v;
  }
  if (r.topic !== undefined && !TOPIC.test(r.topic)) {
    sink.error(
      path,
      `Invalid Kafka topic "${r.topic}": expected 1-255 characters of [a-zA-Z0-9._-]`,
      "topic",
    );
  }
  return {
    apiKeys,
    ...(apiVersion !== undefined ? { apiVersion } : {}),
    ...(r.clientID !== undefined ? { clientID: r.clientID } : {}),
    ...(r.topic !== undefined ? { topic: r.topic } : {}),
  };
}

const DNS_NAME = /^[-a-zA-Z0-9_.]+$/;
const DNS_PATTERN = /^[-a-zA-Z0-9_.*]+$/;

export function checkDnsSelector(
  d: { matchName?: string | undefined; matchPattern?: string | undefined },
  sink: IssueSink,
  path: readonly PathPart[],
): void {
  if ((d.matchName === undefined) === (d.matchPattern === undefined)) {
    sink.error(path, "Expected exactly one of matchName and matchPattern");
    return;
  }
  if (d.matchName !== undefined && !DNS_NAME.test(d.matchName)) {
    sink.error(path, `Invalid matchName "${d.matchName}": expected [-a-zA-Z0-9_.]`, "matchName");
  }
  if (d.matchPattern !== undefined && !DNS_PATTERN.test(d.matchPattern)) {
    sink.error(
      path,
      `Invalid matchPattern "${d.matchPattern}": expected [-a-zA-Z0-9_.*]`,
      "matchPattern",
    );
  }
}

interface PortRuleContext {
  sink: IssueSink;
  path: readonly PathPart[];
  dir: Direction;
  /** The rule selects nodes (nodeSelector): a host policy. */
  host?: boolean;
  check?: RegexCheck;
}

function translateL7(pr: PortRule, ports: PortSpec[], ctx: PortRuleContext): L7Spec | undefined {
  const rules = pr.rules;
  if (!rules) return undefined;
  const { sink, path } = ctx;
  const rp = [...path, "rules"];
  if (rules.l7proto !== undefined || rules.l7 !== undefined) {
    sink.error(rp, "Generic L7 rules (l7proto, l7) are not supported by cilia", "l7proto");
    return undefined;
  }
  if (rules.dns != null && (pr.ports?.length ?? 0) === 0) {
    // Cilium: "Port 53 must be specified for DNS rules".
    sink.error(
      path,
      `DNS rules need their port: list the DNS server's port in "ports", e.g. {port: "53", protocol: ANY}`,
      "ports",
    );
  }
  const families = (["http", "kafka", "dns"] as const).filter((f) => (rules[f]?.length ?? 0) > 0);
  if (families.length === 0) return undefined;
  if (families.length > 1) {
    sink.error(rp, `Only one L7 protocol per port rule: found ${families.join(" and ")}`);
    return undefined;
  }
  const fam = families[0]!;
  if (ctx.host && fam !== "dns") {
    sink.error(
      rp,
      `L7 ${fam.toUpperCase()} rules are not allowed in a host policy (nodeSelector): host policies support DNS rules only`,
      fam,
    );
  }
  if (ports.some((p) => p.port === 0 && p.name === undefined)) {
    sink.error(path, "L7 rules cannot apply to port 0 (all ports): name the port", "ports");
  }
  if (fam === "dns") {
    if (ctx.dir === "ingress") sink.error(rp, "DNS rules are only allowed in egress rules", "dns");
    pr.ports?.forEach((p, i) => {
      if (p.endPort !== undefined && p.endPort !== null && p.endPort !== Number(p.port)) {
        sink.error([...path, "ports", i], "DNS rules cannot apply to a port range", "endPort");
      }
    });
    const list = rules.dns ?? [];
    list.forEach((d, i) => checkDnsSelector(d, sink, [...rp, "dns", i]));
    return {
      kind: "dns",
      rules: list.map((d) => ({
        ...(d.matchName !== undefined ? { matchName: d.matchName } : {}),
        ...(d.matchPattern !== undefined ? { matchPattern: d.matchPattern } : {}),
      })),
    };
  }
  pr.ports?.forEach((p, i) => {
    if (p.protocol !== "TCP") {
      sink.error(
        [...path, "ports", i],
        `L7 ${fam.toUpperCase()} rules need protocol TCP, got ${
          p.protocol ?? "none (ANY)"
        }: L7 rules can only apply to TCP, except DNS rules`,
        "protocol",
      );
    }
  });
  if (fam === "http") {
    const list = rules.http ?? [];
    return {
      kind: "http",
      rules: list.map((h, i) => translateHttp(h, sink, [...rp, "http", i], ctx.check)),
    };
  }
  const list = rules.kafka ?? [];
  return { kind: "kafka", rules: list.map((k, i) => translateKafka(k, sink, [...rp, "kafka", i])) };
}

const UNSUPPORTED_PORT_FIELDS = ["serverNames", "terminatingTLS", "originatingTLS", "listener"];

/** A PortRule → its ports and L7 rules; `deny` rules have ports only (schema enforces it). */
export function translatePortRule(
  pr: PortRule,
  ctx: PortRuleContext,
): { ports: PortSpec[]; l7?: L7Spec } {
  const { sink, path } = ctx;
  for (const f of UNSUPPORTED_PORT_FIELDS) {
    if ((pr as Record<string, unknown>)[f] != null) {
      sink.error(path, `"${f}" is not supported by cilia: it would not be enforced`, f);
    }
  }
  const list = pr.ports ?? [];
  if (list.length > 40) sink.error(path, `Too many ports: ${list.length}, at most 40`, "ports");
  const ports: PortSpec[] = [];
  list.forEach((p, i) => {
    if (p.port === undefined) {
      // Cilium: "Port must be specified" (PortProtocol.sanitize); "0" means every port.
      sink.error(
        [...path, "ports", i],
        `Expected "port": a number, a port name, or "0" for every port`,
        "port",
      );
      return;
    }
    const spec = translatePort(p, sink, [...path, "ports", i], "ANY");
    if (spec) ports.push(spec);
  });
  if (list.length === 0) {
    sink.warn(path, "This port rule lists no ports, so it allows (or denies) nothing", "ports");
  }
  const l7 = translateL7(pr, ports, ctx);
  return l7 ? { ports, l7 } : { ports };
}

const MAX_ICMP_FIELDS = 40;

export function translateIcmps(
  icmps: z.infer<typeof IcmpRule>[],
  sink: IssueSink,
  path: readonly PathPart[],
): PortSpec[] {
  const out: PortSpec[] = [];
  icmps.forEach((rule, i) => {
    if (rule.fields.length > MAX_ICMP_FIELDS) {
      sink.error(
        [...path, i, "fields"],
        `Too many ICMP fields: ${rule.fields.length}, at most ${MAX_ICMP_FIELDS} per ICMP rule`,
      );
    }
    rule.fields.forEach((f, j) => {
      const p = [...path, i, "fields", j];
      const v6 = f.family === "IPv6";
      const table = v6 ? ICMPV6_TYPES : ICMPV4_TYPES;
      let type: number | undefined;
      if (typeof f.type === "number") type = f.type;
      else if (/^[0-9]+$/.test(f.type)) type = Number(f.type);
      else type = table[f.type];
      if (type === undefined || type < 0 || type > 255) {
        const hint = typeof f.type === "string" ? suggest(f.type, Object.keys(table)) : undefined;
        sink.error(
          p,
          `Invalid ICMP${v6 ? "v6" : ""} type "${f.type}"${
            hint ? `: did you mean "${hint}"?` : ": expected 0-255 or a type name"
          }`,
          "type",
        );
        return;
      }
      const proto = v6 ? PROTOCOL_NUMBERS.ICMPV6! : PROTOCOL_NUMBERS.ICMP!;
      out.push({ proto, port: type, endPort: type });
    });
  });
  return out;
}

/** The L7 rule that admits every request of a family (HTTP `{}`, Kafka `{}`, DNS `*`). */
function allowAll(kind: L7Spec["kind"]): L7Spec {
  if (kind === "http") return { kind, rules: [{ headers: [], headerMatches: [] }] };
  if (kind === "kafka") return { kind, rules: [{ apiKeys: [] }] };
  return { kind, rules: [{ matchPattern: "*" }] };
}

/**
 * An allow entry of a default-allow direction: Cilium adds an allow-all L7 rule of the same family
 * next to its L7 rules, so its peers' requests all pass and the proxy only observes them
 * (POLICY-SEMANTICS §9, Cilium l4_filter_test "WildcardInDefaultAllow"). The added rule is last.
 */
export function observeOnly(e: EntrySpec): EntrySpec {
  if (e.deny || !e.l7) return e;
  const extra = allowAll(e.l7.kind);
  const l7 = { kind: e.l7.kind, rules: [...e.l7.rules, ...extra.rules] } as L7Spec;
  return { ...e, l7, observeOnly: true };
}
