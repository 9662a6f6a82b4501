/**
 * The agent's configuration: command-line flags and an optional config file (`--config`, JSON or
 * YAML) with the same keys as the flags (`state-dir`, `pod-cidr`, …), validated by one zod
 * schema into a normalised `AgentConfig`. Flags win over the file; defaults fill the rest. This
 * module reads the config file and the hostname, nothing else.
 */

import { parseArgs } from "node:util";
import { z } from "zod";
import { parse as parseYaml } from "yaml";
import { DEFAULT_LABEL_FILTER, LabelFilter, parsePrefix } from "@cilia/policy-wasm";
import { LOG_LEVELS, type LogLevel } from "./log.ts";
import { HEALTH_PORT } from "./node/health.ts";

export interface AgentConfig {
  stateDir: string;
  socket: string;
  nodeName: string;
  podCidr?: string;
  podCidrV6?: string;
  /** `denokv:///abs/kv.sqlite` or `etcd://host:port[,…]`. */
  kvstore: string;
  /** `host:port` of the Prometheus endpoint; off when absent. */
  metricsAddr?: string;
  logLevel: LogLevel;
  clusterName: string;
  /** Identity-relevant label patterns (regex on the key, `!` excludes). */
  identityLabels: string[];
  /** TTL of this node's lease (node record, identity references), seconds. */
  leaseTtl: number;
  /** How long an identity stays unreferenced before it is released, seconds. */
  identityGcGrace: number;
  /** How often unreferenced identities are looked for, seconds. */
  identityGcInterval: number;
  /** Global identities are numbered in [min, max]. */
  identityRange: { min: number; max: number };
  /** Largest API request body, bytes. */
  apiBodyLimit: number;
  /** `kernel`: the eBPF datapath enforces policy; `none`: nothing is written to the kernel. */
  datapath: "kernel" | "none";
  /** Where the kernel datapath pins its maps and programs (a directory on a bpffs). */
  bpffsRoot: string;
  /** The eBPF object cache (compiled once per source hash). */
  bpfBuildDir: string;
  /** max_entries of the conntrack map (one LRU table for TCP and other protocols). */
  bpfCtMax: number;
  /** max_entries of the policy map (shared by every endpoint of the node). */
  bpfPolicyMapMax: number;
  /** max_entries of the ipcache (prefix → identity, local and remote). */
  bpfIpcacheMax: number;
  /** Flows the monitor keeps in memory (the oldest are overwritten). */
  flowBufferSize: number;
  /** How pods reach other nodes' pods: VXLAN with the identity in the VNI, or plain routes. */
  routingMode: "tunnel" | "native";
  tunnelProtocol: "vxlan" | "geneve";
  /** UDP port of the tunnel (8472, as Cilium). */
  tunnelPort: number;
  /**
   * UDP port of the node reachability probes on the node IP (Cilium's --cluster-health-port,
   * 4240); every node of a cluster must use the same one (node/health.ts).
   */
  clusterHealthPort: number;
  /**
   * The underlay's MTU (Cilium's --mtu); 0: the MTU of the device holding the node IP. Pods get
   * it less the VXLAN overhead (50) in tunnel mode, as the tunnel device does; all of it natively.
   */
  mtu: number;
  /** This node's IP on the underlay; default: its first IPv4 address that is not cilia's. */
  nodeIp?: string;
  /**
   * The underlay device (Cilium's --devices, one device here); default: the one holding the
   * node IP. Without --node-ip, the node IP is this device's first IPv4 address.
   */
  devices?: string;
  /**
   * How long a node whose lease expired keeps its entries (endpoints, routes) on the others,
   * seconds; capped at identityGcGrace, so no identity they name can be released meanwhile.
   */
  nodeGracePeriod: number;
  /** Pods reaching outside the cluster leave with the node IP (bpf/lib/nat.h). */
  enableIpv4Masquerade: boolean;
  /** Destinations in this IPv4 CIDR are reached without masquerade. */
  ipv4NativeRoutingCidr?: string;
  /** The nodePort values services may use (Kubernetes' --service-node-port-range). */
  nodePortRange: { min: number; max: number };
  /** Remote NodePort backends: SNAT to the node IP, or DSR (native routing only). */
  nodePortMode: "snat" | "dsr";
  /**
   * Socket-level load balancing (bpf/sock.c, Cilium's --bpf-lb-sock): cgroup hooks translate a
   * service address at connect/sendmsg for every process in --cgroup-root and below.
   */
  bpfLbSock: boolean;
  /** The cgroup v2 directory the socket LB attaches to; default the cgroup2 mount. */
  cgroupRoot?: string;
  /** Learned DNS records live at least this long, seconds (Cilium's --tofqdns-min-ttl). */
  tofqdnsMinTtl: number;
  /** Addresses kept per endpoint and name; the oldest go first. */
  tofqdnsEndpointMaxIpPerHostname: number;
  /** The answer to a refused DNS query: refused (REFUSED) or nameError (NXDOMAIN). */
  tofqdnsDnsRejectResponseCode: "refused" | "nameError";
  /** The first port the DNS proxy tries on the pod gateway. */
  tofqdnsProxyPort: number;
  /** How long the DNS proxy waits for the upstream server before it answers SERVFAIL, seconds. */
  tofqdnsProxyResponseTimeout: number;
  /** Who serves plain HTTP/1.1 L7 redirects: an epoll Worker or the agent's event loop. */
  l7HttpIo: "worker" | "event-loop";
  /**
   * `/v1/debug/gc` (a full V8 collection, then the memory figures) and `/v1/debug/heap-snapshot`
   * (a V8 heap snapshot in the state dir): for benchmarks and leak hunts; off by default.
   */
  debugApi: boolean;
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** The repository's eBPF object cache (scripts/setup fills it). */
export const DEFAULT_BPF_BUILD_DIR = new URL("../bpf/build", import.meta.url).pathname;

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/;
const UNIT: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600 };

/** Seconds from `12`, `"12"`, `"500ms"`, `"2s"`, `"5m"`. */
const seconds = z.union([z.number(), z.string()]).transform((v, ctx) => {
  if (typeof v === "number") return v;
  const m = DURATION.exec(v.trim());
  if (m === null) {
    ctx.addIssue({ code: "custom", message: `Expected a duration such as "2s" or "500ms"` });
    return z.NEVER;
  }
  return Number(m[1]) * UNIT[m[2] ?? "s"]!;
});
const duration = seconds.pipe(z.number().positive());
const durationOrZero = seconds.pipe(z.number().min(0));

function cidr(family: 4 | 6) {
  return z.string().transform((v, ctx) => {
    try {
      const p = parsePrefix(v);
      const max = family === 4 ? 30 : 126;
      if (p.family !== family || !v.includes("/")) {
        throw new SyntaxError(`not an IPv${family} CIDR`);
      }
      if (p.len > max) throw new SyntaxError(`the prefix is longer than /${max}`);
      return v.trim();
    } catch (err) {
      ctx.addIssue({
        code: "custom",
        message: `Expected an IPv${family} CIDR such as ${
          family === 4 ? "10.200.0.0/24" : "fd00:200::/64"
        }: ${(err as Error).message}`,
      });
      return z.NEVER;
    }
  });
}

const UDP_PORT = "Expected a UDP port from 1 to 65535";

const Schema = z.strictObject({
  stateDir: z.string().min(1).default("/var/lib/cilia"),
  socket: z.string().min(1).default("/var/run/cilia/cilia.sock"),
  nodeName: z.string().regex(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/, {
    message: "Expected a lower-case DNS name such as node-1",
  }).optional(),
  podCidr: cidr(4).optional(),
  podCidrV6: cidr(6).optional(),
  kvstore: z.string().regex(/^(denokv|etcd):\/\//, {
    message: `Expected "denokv:///abs/path/kv.sqlite" or "etcd://host:port[,host:port]"`,
  }).optional(),
  metricsAddr: z.string().regex(/^[^\s/]*:\d{1,5}$/, {
    message: `Expected "host:port" such as 127.0.0.1:9962`,
  }).optional(),
  logLevel: z.enum(LOG_LEVELS).default("info"),
  clusterName: z.string().min(1).default("default"),
  identityLabels: z.array(z.string()).default([...DEFAULT_LABEL_FILTER]),
  leaseTtl: duration.default(15),
  identityGcGrace: duration.default(300),
  identityGcInterval: duration.default(30),
  identityRange: z.object({
    min: z.number().int().min(256),
    max: z.number().int().max(65535),
  }).refine((r) => r.min < r.max, { message: "Expected min below max" })
    .default({ min: 256, max: 65535 }),
  apiBodyLimit: z.number().int().positive().default(1024 * 1024),
  datapath: z.enum(["kernel", "none"], {
    message: `Expected "kernel" (the eBPF datapath) or "none" (no kernel changes)`,
  }).default("kernel"),
  bpffsRoot: z.string().regex(/^\/./, { message: "Expected an absolute path on a bpffs" })
    .default("/sys/fs/bpf/cilia"),
  bpfBuildDir: z.string().regex(/^\/./, { message: "Expected an absolute directory" })
    .default(DEFAULT_BPF_BUILD_DIR),
  // Map sizes: the conntrack map is preallocated (about 130 bytes an entry: 256k ≈ 34 MiB); the
  // policy map and ipcache allocate on demand, so their caps cost nothing until used.
  bpfCtMax: z.coerce.number().int().min(1024).max(1 << 24).default(262144),
  bpfPolicyMapMax: z.coerce.number().int().min(16).max(1 << 24).default(1 << 20),
  bpfIpcacheMax: z.coerce.number().int().min(16).max(1 << 24).default(524288),
  flowBufferSize: z.coerce.number().int().min(1).max(1 << 20).default(4095),
  routingMode: z.enum(["tunnel", "native"], {
    message: `Expected "tunnel" (VXLAN, the identity in the VNI) or "native" (routes)`,
  }).default("tunnel"),
  tunnelProtocol: z.enum(["vxlan", "geneve"], { message: `Expected "vxlan" or "geneve"` })
    .default("vxlan"),
  tunnelPort: z.coerce.number().int().min(1).max(65535).default(8472),
  clusterHealthPort: z.union([z.number(), z.string()], { error: UDP_PORT }).refine(
    (v) => /^\d{1,5}$/.test(String(v).trim()) && Number(v) >= 1 && Number(v) <= 65535,
    { error: (iss) => `${UDP_PORT}, not ${JSON.stringify(iss.input)}` },
  ).transform(Number).default(HEALTH_PORT),
  mtu: z.coerce.number().refine(
    (v) => v === 0 || (Number.isInteger(v) && v >= 1280 && v <= 65535),
    {
      message: "Expected 0 (the underlay device's MTU) or an MTU from 1280 to 65535",
    },
  ).default(0),
  nodeIp: z.string().regex(/^\d{1,3}(\.\d{1,3}){3}$/, {
    message: "Expected the node's IPv4 address on the underlay such as 192.0.2.1",
  }).optional(),
  devices: z.string().regex(/^[^\s/,:]{1,15}$/, {
    message: "Expected one interface name such as eth0 (cilia attaches to one underlay device)",
  }).optional(),
  // 60 s: an agent restart that outlasts the lease TTL (15 s; a cold eBPF build takes about
  // 30 s on 2 cores) or a short cut from etcd costs no connection, and a dead node's entries
  // are gone within about 75 s of its last renewal, long before identity GC (5 m).
  nodeGracePeriod: durationOrZero.default(60),
  enableIpv4Masquerade: z.union([z.boolean(), z.enum(["true", "false"])], {
    message: `Expected "true" or "false"`,
  }).transform((v) => v === true || v === "true").default(true),
  ipv4NativeRoutingCidr: cidr(4).optional(),
  nodePortRange: z.string().regex(/^\d{1,5}-\d{1,5}$/, {
    message: `Expected "min-max" such as 30000-32767`,
  }).transform((v) => ({ min: Number(v.split("-")[0]), max: Number(v.split("-")[1]) }))
    .refine((r) => r.min >= 1 && r.max <= 65535 && r.min <= r.max, {
      message: "Expected 1 <= min <= max <= 65535",
    }).default({ min: 30000, max: 32767 }),
  nodePortMode: z.enum(["snat", "dsr"], {
    message: `Expected "snat" (replies through this node) or "dsr" (direct server return)`,
  }).default("snat"),
  bpfLbSock: z.union([z.boolean(), z.enum(["true", "false"])], {
    message: `Expected "true" or "false"`,
  }).transform((v) => v === true || v === "true").default(false),
  cgroupRoot: z.string().regex(/^\/./, {
    message: "Expected an absolute path to a cgroup v2 directory such as /sys/fs/cgroup",
  }).optional(),
  tofqdnsMinTtl: z.coerce.number().int().min(0).default(0),
  tofqdnsEndpointMaxIpPerHostname: z.coerce.number().int().min(1).default(50),
  tofqdnsDnsRejectResponseCode: z.enum(["refused", "nameError"], {
    message: `Expected "refused" (REFUSED) or "nameError" (NXDOMAIN)`,
  }).default("refused"),
  tofqdnsProxyPort: z.coerce.number().int().min(1).max(65535).default(10053),
  tofqdnsProxyResponseTimeout: duration.default(2),
  l7HttpIo: z.enum(["worker", "event-loop"], {
    message: `Expected "worker" (an epoll Worker) or "event-loop" (the agent's event loop)`,
  }).default("worker"),
  debugApi: z.union([z.boolean(), z.enum(["true", "false"])], {
    message: `Expected "true" or "false"`,
  }).transform((v) => v === true || v === "true").default(false),
});

const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
const camel = (k: string) => k.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());

export const FLAGS = {
  config: { type: "string" },
  "state-dir": { type: "string" },
  socket: { type: "string" },
  "node-name": { type: "string" },
  "pod-cidr": { type: "string" },
  "pod-cidr-v6": { type: "string" },
  kvstore: { type: "string" },
  "metrics-addr": { type: "string" },
  "log-level": { type: "string" },
  "cluster-name": { type: "string" },
  "identity-labels": { type: "string", multiple: true },
  "lease-ttl": { type: "string" },
  "identity-gc-grace": { type: "string" },
  "identity-gc-interval": { type: "string" },
  datapath: { type: "string" },
  "bpffs-root": { type: "string" },
  "bpf-build-dir": { type: "string" },
  "bpf-ct-max": { type: "string" },
  "bpf-policy-map-max": { type: "string" },
  "bpf-ipcache-max": { type: "string" },
  "flow-buffer-size": { type: "string" },
  "routing-mode": { type: "string" },
  "tunnel-protocol": { type: "string" },
  "tunnel-port": { type: "string" },
  "cluster-health-port": { type: "string" },
  mtu: { type: "string" },
  "node-ip": { type: "string" },
  devices: { type: "string" },
  "node-grace-period": { type: "string" },
  "enable-ipv4-masquerade": { type: "string" },
  "ipv4-native-routing-cidr": { type: "string" },
  "node-port-range": { type: "string" },
  "node-port-mode": { type: "string" },
  "bpf-lb-sock": { type: "string" },
  "cgroup-root": { type: "string" },
  "tofqdns-min-ttl": { type: "string" },
  "tofqdns-endpoint-max-ip-per-hostname": { type: "string" },
  "tofqdns-dns-reject-response-code": { type: "string" },
  "tofqdns-proxy-port": { type: "string" },
  "tofqdns-proxy-response-timeout": { type: "string" },
  "l7-http-io": { type: "string" },
  "debug-api": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Validates raw settings (camelCase keys) into a config, filling defaults. */
export function resolveConfig(raw: Record<string, unknown>): AgentConfig {
  const r = Schema.safeParse(raw);
  if (!r.success) {
    const lines = r.error.issues.map((i) => {
      const key = i.path.length > 0 ? `"${i.path.map((p) => kebab(String(p))).join(".")}"` : "";
      const msg = i.code === "unrecognized_keys"
        ? `Unknown key ${i.keys.map((k) => `"${kebab(k)}"`).join(", ")}`
        : i.message;
      return key ? `${key}: ${msg}` : msg;
    });
    throw new ConfigError(`Invalid agent configuration: ${lines.join("; ")}`);
  }
  const c = r.data;
  try {
    new LabelFilter(c.identityLabels);
  } catch (err) {
    throw new ConfigError(
      `Invalid agent configuration: "identity-labels": ${(err as Error).message}`,
    );
  }
  if (c.nodePortMode === "dsr" && c.routingMode === "tunnel") {
    throw new ConfigError(
      `Invalid agent configuration: "node-port-mode": dsr needs --routing-mode native (the ` +
        `service address travels in an IPv4 option, which the VXLAN tunnel does not carry)`,
    );
  }
  if (c.routingMode === "tunnel" && c.clusterHealthPort === c.tunnelPort) {
    throw new ConfigError(
      `Invalid agent configuration: "cluster-health-port": ${c.clusterHealthPort} is the ` +
        `tunnel port too: VXLAN takes every UDP datagram to it on the node IP, so choose another`,
    );
  }
  // A UDP NodePort takes its port on the node IP before the stack sees it (bpf/lib/nodeport.h),
  // so the health probes and VXLAN need ports no service can be given.
  const { min, max } = c.nodePortRange;
  const ports: [string, number, boolean][] = [
    ["cluster-health-port", c.clusterHealthPort, true],
    ["tunnel-port", c.tunnelPort, c.routingMode === "tunnel"],
  ];
  for (const [flag, port, used] of ports) {
    if (!used || port < min || port > max) continue;
    throw new ConfigError(
      `Invalid agent configuration: "${flag}": ${port} is inside "node-port-range" ` +
        `${min}-${max}: a UDP NodePort service could take it, so choose a port outside the range ` +
        `or another range`,
    );
  }
  if (c.routingMode === "tunnel" && c.mtu !== 0 && c.mtu - 50 < 1280) {
    throw new ConfigError(
      `Invalid agent configuration: "mtu": ${c.mtu} leaves pods ${c.mtu - 50} in tunnel mode ` +
        `(VXLAN takes 50 bytes) and IPv6 needs 1280: use at least 1330 or --routing-mode native`,
    );
  }
  const stateDir = c.stateDir.replace(/\/+$/, "") || "/";
  const {
    podCidr,
    podCidrV6,
    metricsAddr,
    nodeIp,
    devices,
    ipv4NativeRoutingCidr,
    cgroupRoot,
    ...rest
  } = c;
  return {
    ...rest,
    stateDir,
    nodeName: c.nodeName ?? Deno.hostname().toLowerCase(),
    kvstore: c.kvstore ?? `denokv://${stateDir}/kv.sqlite`,
    ...(podCidr !== undefined ? { podCidr } : {}),
    ...(podCidrV6 !== undefined ? { podCidrV6 } : {}),
    ...(metricsAddr !== undefined ? { metricsAddr } : {}),
    ...(nodeIp !== undefined ? { nodeIp } : {}),
    ...(devices !== undefined ? { devices } : {}),
    ...(ipv4NativeRoutingCidr !== undefined ? { ipv4NativeRoutingCidr } : {}),
    ...(cgroupRoot !== undefined ? { cgroupRoot: cgroupRoot.replace(/\/+$/, "") } : {}),
  };
}

async function readConfigFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw new ConfigError(`Cannot read config file "${path}": ${(err as Error).message}`);
  }
  let value: unknown;
  try {
    value = path.endsWith(".json") ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new ConfigError(`Cannot parse config file "${path}": ${(err as Error).message}`);
  }
  if (value === null || value === undefined) return {};
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new ConfigError(`Invalid config file "${path}": expected a mapping of settings`);
  }
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [camel(k), v]));
}

/** Flags (and the file `--config` names) → config. `help` is true when `--help` was given. */
export async function loadConfig(argv: string[]): Promise<{ config?: AgentConfig; help: boolean }> {
  let values: Record<string, unknown>;
  try {
    values = parseArgs({ args: argv, options: FLAGS, strict: true }).values;
  } catch (err) {
    throw new ConfigError((err as Error).message.replace(/\. To specify.*$/s, ""));
  }
  if (values.help === true) return { help: true };
  const file = typeof values.config === "string" ? await readConfigFile(values.config) : {};
  const flags: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(values)) {
    if (k === "config" || k === "help" || v === undefined) continue;
    flags[camel(k)] = v;
  }
  return { config: resolveConfig({ ...file, ...flags }), help: false };
}

export const USAGE = `cilia-agent — the cilia node daemon

Usage: cilia-agent [flags]      (or: deno task agent -- [flags])

  --config FILE            JSON or YAML file with the same keys as these flags
  --state-dir DIR          state directory (default /var/lib/cilia)
  --socket PATH            API unix socket (default /var/run/cilia/cilia.sock)
  --node-name NAME         this node's name (default: the hostname)
  --pod-cidr CIDR          IPv4 pod range for host-scope IPAM, e.g. 10.200.0.0/24
  --pod-cidr-v6 CIDR       IPv6 pod range, e.g. fd00:200::/64
  --kvstore URL            denokv:///path/kv.sqlite (default <state-dir>/kv.sqlite)
                           or etcd://127.0.0.1:2379[,host:port…]
  --metrics-addr H:P       serve Prometheus metrics on http://H:P/metrics (off by default)
  --log-level LEVEL        debug, info, warn, error (default info)
  --cluster-name NAME      cluster name in identity labels (default "default")
  --identity-labels PAT    identity-relevant label pattern, repeatable ("!" excludes)
  --lease-ttl DUR          node lease TTL (default 15s)
  --identity-gc-grace DUR  release identities unused for this long (default 5m)
  --identity-gc-interval DUR  how often to look for them (default 30s)
  --datapath MODE          kernel (eBPF programs enforce policy; needs root and a bpffs)
                           or none (no kernel changes, e.g. for tests); default kernel
  --bpffs-root DIR         where the datapath pins maps and programs (default /sys/fs/bpf/cilia)
  --bpf-build-dir DIR      eBPF object cache (default the repository's bpf/build)
  --bpf-ct-max N           conntrack entries, TCP and other protocols in one LRU table: when
                           full, a new flow evicts the least recently used one (default 262144)
  --bpf-policy-map-max N   policy entries, all endpoints of the node (default 1048576)
  --bpf-ipcache-max N      ipcache prefixes, local and remote (default 524288); a pinned map
                           of another size is refused at start with what to do
  --flow-buffer-size N     flows kept in memory for cilia observe (default 4095)
  --routing-mode MODE      tunnel (VXLAN, the source identity in the VNI) or native (routes
                           to each node's pod CIDR via its node IP); default tunnel
  --tunnel-protocol P      vxlan (default); geneve is refused with the reason
  --tunnel-port N          UDP port of the tunnel (default 8472; outside --node-port-range)
  --cluster-health-port N  UDP port on the node IP where the agent answers and sends node
                           reachability probes (default 4240); the same on every node: a
                           node probed on another port shows unreachable, traffic is unaffected;
                           outside --node-port-range
  --mtu N                  the underlay's MTU (default 0: the node IP's device's); pods get
                           N - 50 in tunnel mode (VXLAN's headers), N in native mode
  --node-ip IP             this node's IPv4 address on the underlay: the other nodes'
                           tunnel endpoint or next hop (default: the first that is not cilia's;
                           with --devices, that device's first)
  --devices DEV            the underlay device, where the node's programs attach and whose MTU
                           pods follow (default: the one holding the node IP)
  --node-grace-period DUR  a node whose lease expired keeps its endpoints and routes on the
                           others this long, so one back in time loses nothing (default 60s;
                           0 removes them at once; at most --identity-gc-grace)
  --enable-ipv4-masquerade true|false  pods reaching anything that is neither a pod nor a
                           node leave with the node IP (default true)
  --ipv4-native-routing-cidr CIDR  destinations inside it are reached without masquerade
  --node-port-range MIN-MAX  nodePort values services may use (default 30000-32767)
  --node-port-mode MODE    snat (a backend on another node answers through the node the
                           client reached; default) or dsr (it answers the client directly;
                           the frontend rides in an IPv4 option or an IPv6 extension header;
                           needs --routing-mode native)
  --bpf-lb-sock true|false socket-level load balancing: cgroup connect/sendmsg/recvmsg/
                           getpeername hooks give sockets the backend's address at once, no
                           per-packet translation (default false: it acts on EVERY process in
                           --cgroup-root and below, at the default the whole machine's)
  --cgroup-root PATH       the cgroup v2 directory the socket LB attaches to (default the
                           cgroup2 mount, e.g. /sys/fs/cgroup/unified on a hybrid v1/v2 host)
  --tofqdns-min-ttl SEC    learned DNS addresses live at least this long (default 0: the TTL)
  --tofqdns-endpoint-max-ip-per-hostname N  addresses kept per endpoint and name (default 50)
  --tofqdns-dns-reject-response-code refused|nameError  answer to a refused query (default refused)
  --tofqdns-proxy-port N   first port the DNS proxy tries on the pod gateway (default 10053)
  --tofqdns-proxy-response-timeout DUR  upstream wait before SERVFAIL (default 2s)
  --l7-http-io worker|event-loop  who serves HTTP/1.1 L7 redirects: an epoll Worker or the
                           agent's event loop (default worker; h2c and Kafka stay there)
  --debug-api true|false   serve /v1/debug/gc (a full garbage collection, then the memory
                           figures) and /v1/debug/heap-snapshot (default false)`;
