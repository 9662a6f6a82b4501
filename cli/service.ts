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

export const SERVICE_HELP = `cilia service — ClusterIP services (frontend VIP:port → backends)

Usage: cilia service create --frontend IP:PORT[/TCP|UDP] --backends IP:PORT[*WEIGHT],...
                            [--algorithm random|maglev] [--id N] [--name NS/NAME]
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
  frontend: { ip: string; port: number; protocol: string };
  algorithm: string;
  backends: { ip: string; port: number; weight: number }[];
}

const frontend = (s: ServiceView) => `${s.frontend.ip}:${s.frontend.port}/${s.frontend.protocol}`;

const COLUMNS: Column<ServiceView>[] = [
  { header: "ID", value: (s) => s.id },
  { header: "NAME", value: (s) => s.name ?? "" },
  { header: "TYPE", value: (s) => s.type },
  { header: "FRONTEND", value: frontend },
  { header: "ALGORITHM", value: (s) => s.algorithm },
  {
    header: "BACKENDS",
    value: (s) =>
      s.backends.map((b) => `${b.ip}:${b.port}${b.weight !== 1 ? `*${b.weight}` : ""}`).join(",") ||
      "(none)",
  },
];

/** "10.96.0.10:80/TCP" → the frontend object. */
export function parseFrontend(text: string): ServiceView["frontend"] {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})(?:\/(tcp|udp))?$/i.exec(text.trim());
  if (!m) throw new UsageError(`Invalid --frontend "${text}": expected IP:PORT[/TCP|UDP]`);
  return { ip: m[1]!, port: Number(m[2]), protocol: (m[3] ?? "TCP").toUpperCase() };
}

/** "10.0.0.3:8080,10.0.0.4:8080*2" → backends ("" → none). */
export function parseBackends(text: string): ServiceView["backends"] {
  return text.split(",").map((s) => s.trim()).filter(Boolean).map((s) => {
    const m = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})(?:\*(\d{1,3}))?$/.exec(s);
    if (!m) throw new UsageError(`Invalid backend "${s}": expected IP:PORT[*WEIGHT]`);
    return { ip: m[1]!, port: Number(m[2]), weight: Number(m[3] ?? 1) };
  });
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
    const [k, inline] = tok.split("=", 2) as [string, string | undefined];
    const name = names[k] ?? k.replace(/^--/, "");
    if (!["output", "host", "frontend", "backends", "algorithm", "id", "name"].includes(name)) {
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
        backends: parseBackends(flags.backends ?? ""),
        ...(flags.algorithm ? { algorithm: flags.algorithm } : {}),
        ...(flags.id ? { id: Number(flags.id) } : {}),
        ...(flags.name ? { name: flags.name } : {}),
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
