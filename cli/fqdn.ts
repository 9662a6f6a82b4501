// `cilia fqdn cache list|clean`: what the agent's DNS proxy learned for toFQDNs, per endpoint
// (`/v1/fqdn/cache`), after `cilium fqdn cache list|clean`. Parses its own flags; the listing
// renders one model as a table, JSON or YAML. `clean` refuses to run without `-f`: it asks
// nothing, so scripts never hang on a prompt.

import {
  type Column,
  type Format,
  parseFormat,
  renderList,
  renderModel,
  UsageError,
} from "./output.ts";
import { AgentClient, socketPath } from "./live_client.ts";

export const FQDN_HELP = `cilia fqdn cache — the names and addresses the DNS proxy learned

Usage: cilia fqdn cache list [--endpoint NS/NAME|ID] [--name NAME]
       cilia fqdn cache clean -f [--endpoint NS/NAME|ID] [--name NAME]
Flags: -o table|json|yaml  -H unix:///path
--name is exact and case-insensitive ("api.example.com" or "api.example.com.").
clean forgets the records: their addresses lose their toFQDNs identities, so new connections
to them are denied until the pod looks the name up again. It needs -f.`;

interface CacheEntryView {
  endpoint: number;
  name: string;
  ip: string;
  learnedAt: string;
  expiresAt: string;
  ttl: number;
  identity: number | null;
}

const COLUMNS: Column<CacheEntryView>[] = [
  { header: "ENDPOINT", value: (e) => e.endpoint },
  { header: "FQDN", value: (e) => e.name },
  { header: "IP", value: (e) => e.ip },
  { header: "TTL", value: (e) => `${e.ttl}s` },
  { header: "IDENTITY", value: (e) => e.identity ?? "" },
  { header: "LEARNED", value: (e) => e.learnedAt },
];

function parse(argv: string[]) {
  const flags: Record<string, string> = {};
  const pos: string[] = [];
  let force = false;
  const names: Record<string, string> = { "-o": "output", "-H": "host" };
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i]!;
    if (tok === "--help" || tok === "-h") return { help: true, force, flags, pos };
    if (tok === "--no-color") continue; // nothing here is coloured
    if (tok === "-f" || tok === "--force") {
      force = true;
      continue;
    }
    if (!tok.startsWith("-")) {
      pos.push(tok);
      continue;
    }
    const [k, inline] = tok.split("=", 2) as [string, string | undefined];
    const name = names[k] ?? k.replace(/^--/, "");
    if (!["output", "host", "endpoint", "name"].includes(name)) {
      throw new UsageError(`Unknown fqdn flag "${tok}": run "cilia fqdn cache --help"`);
    }
    const v = inline ?? argv[++i];
    if (v === undefined) throw new UsageError(`Flag "${k}" needs a value`);
    flags[name] = v;
  }
  return { help: false, force, flags, pos };
}

function query(flags: Record<string, string>): string {
  const q = new URLSearchParams();
  if (flags.endpoint) q.set("endpoint", flags.endpoint);
  if (flags.name) q.set("name", flags.name);
  const s = q.toString();
  return s ? `?${s}` : "";
}

export async function fqdn(argv: string[]): Promise<number> {
  const { help, force, flags, pos } = parse(argv);
  if (help) {
    console.log(FQDN_HELP);
    return 0;
  }
  const [group, verb = "list"] = pos;
  if (group !== "cache") {
    throw new UsageError(`Unknown command "fqdn ${pos.join(" ")}": expected "fqdn cache"`);
  }
  if (verb !== "list" && verb !== "clean") {
    throw new UsageError(`Unknown command "fqdn cache ${verb}": expected list or clean`);
  }
  if (verb === "clean" && !force) {
    throw new UsageError(
      "fqdn cache clean forgets learned addresses (new connections to them are denied): add -f",
    );
  }
  const f: Format = parseFormat(flags.output);
  const api = new AgentClient(socketPath(flags.host));
  try {
    if (verb === "list") {
      const { entries } = await api.request<{ entries: CacheEntryView[] }>(
        "GET",
        `/v1/fqdn/cache${query(flags)}`,
      );
      console.log(renderList(entries, COLUMNS, f));
    } else {
      const r = await api.request<{ removed: number }>("DELETE", `/v1/fqdn/cache${query(flags)}`);
      console.log(f === "table" ? `Removed ${r.removed} FQDN cache records` : renderModel(r, f));
    }
    return 0;
  } finally {
    api.close();
  }
}
