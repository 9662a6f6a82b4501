// `cilia bpf policy get <endpoint>`, `cilia bpf ct list`, `cilia bpf ipcache list`, `cilia bpf
// nat list`: what the kernel's maps hold, read by the agent (the one process that opens them)
// and rendered as a table, JSON or YAML.

import { protocolName } from "@cilia/policy-wasm";
import { type Column, type Format, parseFormat, renderList, UsageError } from "./output.ts";
import { AgentClient, socketPath } from "./live_client.ts";

export const BPF_HELP = `cilia bpf — the kernel's maps as the agent reads them

Usage: cilia bpf policy get ENDPOINT (id, NS/NAME or NAME)
       cilia bpf ct list
       cilia bpf ipcache list
       cilia bpf nat list      (node-IP SNAT: masquerade and NodePort translations)
Flags: -o table|json|yaml  -H unix:///path`;

interface PolicyRow {
  direction: string;
  identity: number;
  proto: number;
  portLo: number;
  portHi: number;
  verdict: string;
  cookie: number;
  proxyPort?: number;
  rule?: string;
}

const ports = (lo: number, hi: number) =>
  lo === 0 && hi === 65535 ? "*" : lo === hi ? `${lo}` : `${lo}-${hi}`;

const POLICY_COLUMNS: Column<PolicyRow>[] = [
  { header: "DIRECTION", value: (r) => r.direction },
  { header: "IDENTITY", value: (r) => r.identity === 0 ? "any" : r.identity },
  { header: "PROTO", value: (r) => r.proto === 0 ? "any" : protocolName(r.proto) },
  { header: "PORTS", value: (r) => r.proto === 0 ? "*" : ports(r.portLo, r.portHi) },
  { header: "VERDICT", value: (r) => r.verdict + (r.proxyPort ? ` → :${r.proxyPort}` : "") },
  { header: "COOKIE", value: (r) => `0x${r.cookie.toString(16).padStart(8, "0")}` },
  { header: "RULE", value: (r) => r.rule ?? "" },
];

type CtRow = Record<string, string | number>;
const CT_COLUMNS: Column<CtRow>[] = [
  { header: "ENDPOINT", value: (r) => r.endpoint },
  { header: "DIR", value: (r) => r.direction },
  { header: "PROTO", value: (r) => protocolName(Number(r.proto)) },
  { header: "SOURCE", value: (r) => `${r.source}:${r.sourcePort}` },
  { header: "DESTINATION", value: (r) => `${r.destination}:${r.destinationPort}` },
  { header: "PEER-IDENTITY", value: (r) => r.peerIdentity },
  { header: "PACKETS", value: (r) => r.packets },
  { header: "BYTES", value: (r) => r.bytes },
];

type NatRow = Record<string, string | number>;
const NAT_COLUMNS: Column<NatRow>[] = [
  { header: "HOOK", value: (r) => r.hook },
  { header: "KIND", value: (r) => r.kind },
  { header: "PROTO", value: (r) => protocolName(Number(r.proto)) },
  { header: "SOURCE", value: (r) => `${r.source}:${r.sourcePort}` },
  { header: "DESTINATION", value: (r) => `${r.destination}:${r.destinationPort}` },
  { header: "NEW-SOURCE", value: (r) => r.newSource ?? "" },
  { header: "NEW-DESTINATION", value: (r) => r.newDestination ?? "" },
];

const IPCACHE_COLUMNS: Column<{ prefix: string; identity: number }>[] = [
  { header: "PREFIX", value: (r) => r.prefix },
  { header: "IDENTITY", value: (r) => r.identity },
];

export async function bpf(argv: string[]): Promise<number> {
  const pos: string[] = [];
  let format: Format = "table", host: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i]!;
    if (tok === "--help" || tok === "-h") {
      console.log(BPF_HELP);
      return 0;
    }
    if (tok === "-o" || tok === "--output") format = parseFormat(argv[++i]);
    else if (tok === "-H" || tok === "--host") host = argv[++i];
    else if (tok.startsWith("-")) {
      throw new UsageError(`Unknown bpf flag "${tok}": expected -o or -H`);
    } else pos.push(tok);
  }
  const api = new AgentClient(socketPath(host));
  try {
    const [what, verb, arg] = pos;
    if (what === "policy" && verb === "get") {
      if (!arg) throw new UsageError("bpf policy get: give the endpoint (id, NS/NAME or NAME)");
      const r = await api.request<{ endpoint: unknown; entries: PolicyRow[] }>(
        "GET",
        `/v1/bpf/policy/${arg.split("/").map(encodeURIComponent).join("/")}`,
      );
      console.log(renderList(r.entries, POLICY_COLUMNS, format));
      return 0;
    }
    if (what === "ct" && (verb ?? "list") === "list") {
      console.log(renderList(await api.request<CtRow[]>("GET", "/v1/bpf/ct"), CT_COLUMNS, format));
      return 0;
    }
    if (what === "nat" && (verb ?? "list") === "list") {
      console.log(
        renderList(await api.request<NatRow[]>("GET", "/v1/bpf/nat"), NAT_COLUMNS, format),
      );
      return 0;
    }
    if (what === "ipcache" && (verb ?? "list") === "list") {
      const rows = await api.request<{ prefix: string; identity: number }[]>(
        "GET",
        "/v1/bpf/ipcache",
      );
      console.log(renderList(rows, IPCACHE_COLUMNS, format));
      return 0;
    }
    throw new UsageError(
      `Unknown command "bpf ${
        pos.join(" ")
      }": expected policy get, ct list, ipcache list or nat list`,
    );
  } finally {
    api.close();
  }
}
