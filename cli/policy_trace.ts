// `cilia policy trace`: one flow, judged offline by the engine against policy files, printed as
// the decision chain in words, or with `-o json|yaml` as renderFlow()'s report (the same report
// the agent's live trace answers). Peers are given by labels (an ad-hoc endpoint), by IP, by
// entity, or by name from a scenario file's endpoints.

import {
  compilePolicies,
  type EndpointInput,
  evaluateFlow,
  type FlowInput,
  FlowInputError,
  KAFKA_API_KEYS,
  loadScenario,
  parseAddress,
  parseHeaderLines,
  parseLabelList,
  type PeerRef,
  PolicyEngine,
  type PolicySource,
  renderFlow,
  RESERVED_BY_NAME,
  SimCluster,
} from "@cilia/policy-wasm";
import { readInputs, readPolicyFile } from "./files.ts";
import { type Format, renderModel, UsageError } from "./output.ts";

export interface TraceArgs {
  policy: string[];
  scenario?: string | undefined;
  src: PeerArgs;
  dst: PeerArgs;
  dport?: string | undefined;
  icmpType?: string | undefined;
  http: {
    method?: string | undefined;
    path?: string | undefined;
    host?: string | undefined;
    headers: string[];
  };
  kafka: {
    role?: string | undefined;
    apiKey?: string | undefined;
    topic: string[];
    clientId?: string | undefined;
    apiVersion?: string | undefined;
  };
}

/** The `policy trace` flags as parsed (a structural subset of main.ts's flags). */
export interface TraceFlags {
  policy?: string[] | undefined;
  scenario?: string | undefined;
  dport?: string | undefined;
  "icmp-type"?: string | undefined;
  "http-method"?: string | undefined;
  "http-path"?: string | undefined;
  "http-host"?: string | undefined;
  "http-header"?: string[] | undefined;
  "kafka-role"?: string | undefined;
  "kafka-api-key"?: string | undefined;
  "kafka-topic"?: string[] | undefined;
  "kafka-client-id"?: string | undefined;
  "kafka-api-version"?: string | undefined;
  [peerFlag: `${"src" | "dst"}-${string}`]: string | undefined;
}

/** Flags (and extra positional policy files) → TraceArgs; shared by offline and live trace. */
export function traceArgsFromFlags(v: TraceFlags, files: string[] = []): TraceArgs {
  const peer = (side: "src" | "dst"): PeerArgs => ({
    labels: v[`${side}-labels`],
    ip: v[`${side}-ip`],
    entity: v[`${side}-entity`],
    endpoint: v[`${side}-endpoint`],
    namespace: v[`${side}-namespace`],
  });
  return {
    policy: [...(v.policy ?? []), ...files],
    scenario: v.scenario,
    src: peer("src"),
    dst: peer("dst"),
    dport: v.dport,
    icmpType: v["icmp-type"],
    http: {
      method: v["http-method"],
      path: v["http-path"],
      host: v["http-host"],
      headers: v["http-header"] ?? [],
    },
    kafka: {
      role: v["kafka-role"],
      apiKey: v["kafka-api-key"],
      topic: v["kafka-topic"] ?? [],
      clientId: v["kafka-client-id"],
      apiVersion: v["kafka-api-version"],
    },
  };
}

export interface PeerArgs {
  labels?: string | undefined;
  ip?: string | undefined;
  entity?: string | undefined;
  endpoint?: string | undefined;
  namespace?: string | undefined;
}

const NS_KEY = "io.kubernetes.pod.namespace";

/** A label or header syntax error as a usage error (exit 2). */
function usage<T>(parse: () => T): T {
  try {
    return parse();
  } catch (e) {
    if (e instanceof SyntaxError) throw new UsageError(e.message);
    throw e;
  }
}

/** "app=web,k8s:tier=1" → labels (parseLabelList's rules), the namespace label taken out. */
export function parseLabels(
  text: string,
  what: string,
): { labels: Record<string, string>; namespace?: string } {
  const labels: Record<string, string> = {};
  let namespace: string | undefined;
  for (const [key, value] of Object.entries(usage(() => parseLabelList(text, what)))) {
    if (key.replace(/^(k8s|any):/, "") === NS_KEY) namespace = value;
    else labels[key] = value;
  }
  return namespace !== undefined ? { labels, namespace } : { labels };
}

/** "80/TCP", "53/udp", "8080" (TCP), "ICMP" → [port, protocol]. */
export function parseDport(text: string | undefined): [number, FlowInput["protocol"]] {
  if (!text) throw new UsageError("policy trace: --dport is required, e.g. --dport 80/TCP");
  const [p, proto = "TCP"] = text.split("/");
  const protocol = proto.toUpperCase();
  if (!["TCP", "UDP", "SCTP", "ICMP", "ICMPV6"].includes(protocol)) {
    throw new UsageError(`Invalid protocol "${proto}" in --dport: expected TCP, UDP, SCTP or ICMP`);
  }
  if (/^icmp/i.test(p ?? "")) return [0, "ICMP"];
  const port = Number(p);
  if (!/^\d+$/.test(p ?? "") || port > 65535) {
    throw new UsageError(`Invalid port "${p}" in --dport: expected 0-65535`);
  }
  return [port, protocol as FlowInput["protocol"]];
}

function peerOf(side: "src" | "dst", a: PeerArgs, endpoints: EndpointInput[]): PeerRef {
  const given = [a.labels, a.ip, a.entity, a.endpoint].filter((x) => x !== undefined).length;
  if (given !== 1) {
    throw new UsageError(
      `policy trace: give exactly one of --${side}-labels, --${side}-ip, --${side}-entity, --${side}-endpoint`,
    );
  }
  if (a.ip !== undefined) {
    if (parseAddress(a.ip.replace(/\/\d+$/, "")) === null) {
      throw new UsageError(
        `Invalid --${side}-ip "${a.ip}": expected an IPv4 or IPv6 address, e.g. 203.0.113.7 or 2001:db8::7`,
      );
    }
    return { cidr: a.ip };
  }
  if (a.entity !== undefined && !Object.hasOwn(RESERVED_BY_NAME, a.entity)) {
    throw new UsageError(
      `Invalid --${side}-entity "${a.entity}": expected one of ${
        Object.keys(RESERVED_BY_NAME).join(", ")
      }`,
    );
  }
  if (a.entity !== undefined) return { entity: a.entity };
  if (a.endpoint !== undefined) return a.endpoint;
  const { labels, namespace } = parseLabels(a.labels!, `--${side}-labels`);
  const name = `${side}{${a.labels}}`;
  endpoints.push({ name, namespace: a.namespace ?? namespace ?? "default", labels });
  return `${a.namespace ?? namespace ?? "default"}/${name}`;
}

export function flowInput(args: TraceArgs, from: PeerRef, to: PeerRef): FlowInput {
  const [port, protocol] = parseDport(args.dport);
  const f: FlowInput = { from, to, port, protocol };
  if (args.icmpType !== undefined) f.icmpType = Number(args.icmpType);
  const h = args.http;
  if (
    h.method !== undefined || h.path !== undefined || h.headers.length > 0 || h.host !== undefined
  ) {
    const headers = usage(() => parseHeaderLines(h.headers, "--http-header"));
    f.http = {
      method: h.method ?? "GET",
      path: h.path ?? "/",
      ...(h.host !== undefined ? { host: h.host } : {}),
      headers,
    };
  }
  const k = args.kafka;
  if (
    k.role !== undefined || k.apiKey !== undefined || k.topic.length > 0 || k.clientId !== undefined
  ) {
    const keyName = k.apiKey ?? (k.role === "consume" ? "fetch" : "produce");
    const apiKey = /^\d+$/.test(keyName) ? Number(keyName) : KAFKA_API_KEYS[keyName.toLowerCase()];
    if (apiKey === undefined) throw new UsageError(`Unknown Kafka API key "${keyName}"`);
    if (k.role !== undefined && !["produce", "consume"].includes(k.role)) {
      throw new UsageError(`Invalid --kafka-role "${k.role}": expected produce or consume`);
    }
    f.kafka = {
      apiKey,
      topics: k.topic,
      ...(k.clientId !== undefined ? { clientID: k.clientId } : {}),
      ...(k.apiVersion !== undefined ? { apiVersion: Number(k.apiVersion) } : {}),
    };
  }
  return f;
}

/** A flow the engine cannot judge because of its input (an unknown endpoint) is a usage error. */
function evaluate<T>(run: () => T): T {
  try {
    return run();
  } catch (e) {
    if (e instanceof FlowInputError) throw new UsageError(e.message);
    throw e;
  }
}

export async function policyTrace(args: TraceArgs, format: Format): Promise<number> {
  const engine = await PolicyEngine.create();
  try {
    const sources: PolicySource[] = (await readInputs(args.policy)).map((f) => ({
      text: f.text,
      file: f.path,
    }));
    const endpoints: EndpointInput[] = [];
    let namespaces: { name: string; labels?: Record<string, string> | undefined }[] = [];
    if (args.scenario) {
      const [f] = await readInputs([args.scenario]);
      const s = loadScenario(f!.text, f!.path, { readPolicyFile });
      sources.push(...s.sources);
      endpoints.push(...s.scenario.endpoints);
      namespaces = s.scenario.namespaces ?? [];
    }
    const from = peerOf("src", args.src, endpoints);
    const to = peerOf("dst", args.dst, endpoints);
    const compiled = compilePolicies(sources, { regexCheck: (p) => engine.checkRegex(p) });
    const cluster = new SimCluster({ namespaces, endpoints });
    cluster.load(engine, compiled.spec, engine.options);
    const report = renderFlow(
      engine,
      evaluate(() => evaluateFlow(cluster, engine, flowInput(args, from, to))),
    );
    console.log(format === "table" ? report.trace.join("\n") : renderModel(report, format));
    return 0;
  } finally {
    engine.close();
  }
}
