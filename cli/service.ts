// `cilia service create|list|get|delete|import`: ClusterIP services through the agent's API
// (`/v1/service`), after `cilium service update|list|get|delete`. Parses its own flags; every
// listing renders one model as a table, JSON or YAML.

import {
  type Column,
  type Format,
  parseFormat,
  renderList,
  renderModel,
  UsageError,
} from "./output.ts";
import { AgentClient, socketPath } from "./live_client.ts";

export const SERVICE_HELP = `cilia service — services (frontend VIP:port → backends)

Usage: cilia service create --frontend IP:PORT[/TCP|UDP] --backends IP:PORT[*WEIGHT],...
                            (IPv6: [IP]:PORT; one family per service)
                            [--algorithm random|maglev] [--id N] [--name NS/NAME]
                            [--type ClusterIP|NodePort|LoadBalancer] [--node-port N]
                            [--lb-ips IP,...]   (NodePort: <node IP>:N from outside;
                            LoadBalancer: also <lb ip>:PORT; no --node-port: one is allocated)
                            [--session-affinity [--affinity-timeout 3h]]  (ClientIP: a client
                            stays on its backend until no new connection for the timeout)
                            [--terminating IP:PORT,...]  (backends of --backends that finish
                            their connections and get no new ones)
                            [--selector K=V,...] [--labels K=V,...]  (the Kubernetes Service's
                            pod selector and labels, for toServices in policies)
       cilia service list
       cilia service get ID
       cilia service delete ID | --frontend IP:PORT[/PROTO]
       cilia service import FILE   (Kubernetes Service + EndpointSlice YAML, - for stdin)
Flags: -o table|json|yaml  -H unix:///path
A create of an existing frontend replaces its backends (upsert is an alias).`;

interface ServiceView {
  id: number;
  name?: string;
  type: string;
  nodePort?: number;
  loadBalancerIPs?: string[];
  frontend: { ip: string; port: number; protocol: string };
  algorithm: string;
  sessionAffinity?: string;
  affinityTimeoutSeconds?: number;
  backends: { ip: string; port: number; weight: number; terminating?: boolean }[];
}

/** "10.0.0.1:80", "[fd00::1]:80". */
const hostPort = (ip: string, port: number) =>
  ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;

const frontend = (s: ServiceView) =>
  `${hostPort(s.frontend.ip, s.frontend.port)}/${s.frontend.protocol}`;

const COLUMNS: Column<ServiceView>[] = [
  { header: "ID", value: (s) => s.id },
  { header: "NAME", value: (s) => s.name ?? "" },
  {
    header: "TYPE",
    value: (s) =>
      [s.type, s.nodePort ? `:${s.nodePort}` : "", ...(s.loadBalancerIPs ?? []).map((x) => ` ${x}`)]
        .join(""),
  },
  { header: "FRONTEND", value: frontend },
  {
    header: "ALGORITHM",
    value: (s) =>
      s.algorithm +
      (s.sessionAffinity === "ClientIP" ? ` affinity:${s.affinityTimeoutSeconds}s` : ""),
  },
  {
    header: "BACKENDS",
    value: (s) =>
      s.backends.map((b) =>
        `${hostPort(b.ip, b.port)}${b.weight !== 1 ? `*${b.weight}` : ""}${
          b.terminating ? "(terminating)" : ""
        }`
      ).join(",") ||
      "(none)",
  },
];

// An IPv4 address, or an IPv6 one in brackets (the agent checks the address itself).
const HOST = String.raw`(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\])`;
const unbracket = (h: string) => h.startsWith("[") ? h.slice(1, -1) : h;

/** "10.96.0.10:80/TCP", "[fd00:96::10]:80/UDP" → the frontend object. */
export function parseFrontend(text: string): ServiceView["frontend"] {
  const m = new RegExp(`^${HOST}:(\\d{1,5})(?:/(tcp|udp))?$`, "i").exec(text.trim());
  if (!m) {
    throw new UsageError(`Invalid --frontend "${text}": expected IP:PORT[/TCP|UDP] or [IPv6]:PORT`);
  }
  return { ip: unbracket(m[1]!), port: Number(m[2]), protocol: (m[3] ?? "TCP").toUpperCase() };
}

/** "10.0.0.3:8080,10.0.0.4:8080*2", "[fd00::3]:8080" → backends ("" → none). */
export function parseBackends(text: string): ServiceView["backends"] {
  return text.split(",").map((s) => s.trim()).filter(Boolean).map((s) => {
    const m = new RegExp(`^${HOST}:(\\d{1,5})(?:\\*(\\d{1,3}))?$`).exec(s);
    if (!m) {
      throw new UsageError(`Invalid backend "${s}": expected IP:PORT[*WEIGHT] or [IPv6]:PORT`);
    }
    return { ip: unbracket(m[1]!), port: Number(m[2]), weight: Number(m[3] ?? 1) };
  });
}

function parsePort(text: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) {
    throw new UsageError(`Invalid --node-port "${text}": expected 1-65535`);
  }
  return Number(text);
}

/** "3h", "90m", "30s", "1h30m" or plain seconds → seconds (1-86400). */
export function parseDuration(text: string): number {
  const m = /^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$/.exec(text.trim());
  const secs = m && text.trim() !== ""
    ? Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + Number(m[3] ?? 0)
    : NaN;
  if (!(secs >= 1 && secs <= 86400)) {
    throw new UsageError(
      `Invalid --affinity-timeout "${text}": expected a duration of 1s-24h, like 3h, 90m or 30s`,
    );
  }
  return secs;
}

/** --selector / --labels K=V,... → a label map; a pair without "=" or key is a usage error. */
function parseLabelList(flag: string, text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of text.split(",").filter(Boolean)) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new UsageError(`Invalid ${flag} "${pair}": expected KEY=VALUE`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

/** --terminating IP:PORT,... marks those of the backends; each must be one of them. */
function markTerminating(backends: ServiceView["backends"], text: string | undefined) {
  if (text === undefined) return backends;
  const names = new Set(parseBackends(text).map((b) => hostPort(b.ip, b.port)));
  for (const n of names) {
    if (!backends.some((b) => hostPort(b.ip, b.port) === n)) {
      throw new UsageError(`Invalid --terminating "${n}": it is not one of --backends`);
    }
  }
  return backends.map((b) => names.has(hostPort(b.ip, b.port)) ? { ...b, terminating: true } : b);
}

function parse(argv: string[]) {
  const flags: Record<string, string> = {};
  const pos: string[] = [];
  const names: Record<string, string> = { "-o": "output", "-H": "host" };
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i]!;
    if (tok === "--help" || tok === "-h") return { help: true, flags, pos };
    if (tok === "--no-color") continue; // nothing here is coloured
    if (!tok.startsWith("-") || tok === "-") {
      pos.push(tok);
      continue;
    }
    if (tok === "--session-affinity") { // no value: ClientIP (or --session-affinity=None)
      flags["session-affinity"] = "ClientIP";
      continue;
    }
    const [k, inline] = tok.split("=", 2) as [string, string | undefined];
    const name = names[k] ?? k.replace(/^--/, "");
    const known = ["output", "host", "frontend", "backends", "algorithm", "id", "name", "type"];
    const more = [
      "node-port",
      "lb-ips",
      "session-affinity",
      "affinity-timeout",
      "terminating",
      "selector",
      "labels",
    ];
    if (![...known, ...more].includes(name)) {
      throw new UsageError(`Unknown service flag "${tok}": run "cilia service --help"`);
    }
    const v = inline ?? argv[++i];
    if (v === undefined) throw new UsageError(`Flag "${k}" needs a value`);
    flags[name] = v;
  }
  return { help: false, flags, pos };
}

async function readInput(file: string): Promise<string> {
  if (file === "-") return await new Response(Deno.stdin.readable).text();
  return await Deno.readTextFile(file);
}

export async function service(argv: string[]): Promise<number> {
  const { help, flags, pos } = parse(argv);
  if (help) {
    console.log(SERVICE_HELP);
    return 0;
  }
  const f: Format = parseFormat(flags.output);
  const [verb = "list", arg] = pos;
  const api = new AgentClient(socketPath(flags.host));
  const show = (s: ServiceView | ServiceView[]) =>
    console.log(f === "table" ? renderList([s].flat(), COLUMNS, f) : renderModel(s, f));
  try {
    if (verb === "list") {
      show(await api.request<ServiceView[]>("GET", "/v1/service"));
    } else if (verb === "get") {
      if (!arg) throw new UsageError("service get: give the service id");
      show(await api.request<ServiceView>("GET", `/v1/service/${encodeURIComponent(arg)}`));
    } else if (verb === "create" || verb === "upsert") {
      if (!flags.frontend) throw new UsageError(`service ${verb}: --frontend is required`);
      const body = {
        frontend: parseFrontend(flags.frontend),
        backends: markTerminating(parseBackends(flags.backends ?? ""), flags.terminating),
        ...(flags.algorithm ? { algorithm: flags.algorithm } : {}),
        ...(flags.id ? { id: Number(flags.id) } : {}),
        ...(flags.name ? { name: flags.name } : {}),
        ...(flags.type ? { type: flags.type } : {}),
        ...(flags["node-port"] ? { nodePort: parsePort(flags["node-port"]) } : {}),
        ...(flags["lb-ips"] ? { loadBalancerIPs: flags["lb-ips"].split(",").filter(Boolean) } : {}),
        ...(flags["session-affinity"] ? { sessionAffinity: flags["session-affinity"] } : {}),
        ...(flags["affinity-timeout"]
          ? { affinityTimeoutSeconds: parseDuration(flags["affinity-timeout"]) }
          : {}),
        ...(flags.selector ? { selector: parseLabelList("--selector", flags.selector) } : {}),
        ...(flags.labels ? { labels: parseLabelList("--labels", flags.labels) } : {}),
      };
      show(await api.request<ServiceView>("PUT", "/v1/service", { json: body }));
    } else if (verb === "delete") {
      let id = arg;
      if (id === undefined && flags.frontend) {
        const want = parseFrontend(flags.frontend);
        const all = await api.request<ServiceView[]>("GET", "/v1/service");
        id = all.find((s) => frontend(s) === frontend({ frontend: want } as ServiceView))?.id
          .toString();
        if (id === undefined) throw new Error(`No service has the frontend "${flags.frontend}"`);
      }
      if (id === undefined) throw new UsageError("service delete: give the id or --frontend");
      const s = await api.request<ServiceView>("DELETE", `/v1/service/${encodeURIComponent(id)}`);
      console.log(f === "table" ? `Deleted service ${s.id} (${frontend(s)})` : renderModel(s, f));
    } else if (verb === "import") {
      if (!arg) throw new UsageError("service import: give the file (- for stdin)");
      const text = await readInput(arg);
      show(await api.request<ServiceView[]>("POST", "/v1/service/import", { text }));
    } else {
      throw new UsageError(
        `Unknown command "service ${verb}": expected create, list, get, delete or import`,
      );
    }
    return 0;
  } finally {
    api.close();
  }
}
