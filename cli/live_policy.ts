// Live `cilia policy` commands against the agent: import files (one atomic request), get the
// policies in force (`-o yaml` prints documents that import again unchanged, `-o json` a v1
// List that does too), delete by name, labels or all, and trace a flow between live endpoints.

import { parse as parseYaml } from "yaml";
import { type FlowReport, formatLabelList } from "@cilia/policy-wasm";
import type { Flags } from "./main.ts";
import { readInputs } from "./files.ts";
import { type Format, renderList, renderModel, UsageError } from "./output.ts";
import type { AgentClient } from "./live_client.ts";
import { flowInput, traceArgsFromFlags } from "./policy_trace.ts";

interface PolicyRef {
  kind: string;
  namespace?: string;
  name: string;
  labels: Record<string, string>;
}

export async function policyImport(
  api: AgentClient,
  files: string[],
  format: Format,
): Promise<number> {
  if (files.length === 0) throw new UsageError("policy import: give one or more files (or -)");
  const inputs = await readInputs(files);
  const r = await api.request<
    { revision: number; changed: boolean; policies: PolicyRef[] } & Realisation
  >(
    "PUT",
    "/v1/policy",
    { json: { sources: inputs.map((f) => ({ text: f.text, file: f.path })) } },
  );
  if (format !== "table") console.log(renderModel(r, format));
  else {
    const what = r.changed ? "Imported" : "Unchanged:";
    console.log(
      `${what} ${r.policies.length} polic${
        r.policies.length === 1 ? "y" : "ies"
      }, revision ${r.revision}`,
    );
  }
  return reportRealisation(r);
}

interface Realisation {
  revision: number;
  realised?: boolean;
  unrealised?: { endpoint: number; error: string }[];
}

/** A change the agent stored but could not write everywhere: say so on stderr, exit 1. */
function reportRealisation(r: Realisation): number {
  if (r.realised !== false) return 0;
  const list = r.unrealised ?? [];
  console.error(
    `Error: revision ${r.revision} is stored but not in force on ${list.length} endpoint(s); ` +
      `the kernel drops their traffic until the agent's retry writes it (see "cilia status"):`,
  );
  for (const u of list) console.error(`  endpoint ${u.endpoint}: ${u.error}`);
  return 1;
}

function filterQuery(name: string | undefined, v: Flags): Record<string, string | undefined> {
  return {
    name,
    namespace: v.namespace,
    kind: v.kind,
    labels: v.labels,
  };
}

export async function policyGet(
  api: AgentClient,
  rest: string[],
  v: Flags,
  format: Format,
): Promise<number> {
  const query = filterQuery(rest[0], v);
  if (format === "yaml") {
    const text = await api.request<string>("GET", "/v1/policy", {
      accept: "application/yaml",
      query,
    });
    Deno.stdout.writeSync(new TextEncoder().encode(text));
    return 0;
  }
  const r = await api.request<{ revision: number; policies: (PolicyRef & { text: string })[] }>(
    "GET",
    "/v1/policy",
    { query },
  );
  if (format === "json") {
    const items = r.policies.map((p) => parseYaml(p.text) as unknown);
    console.log(renderModel({ apiVersion: "v1", kind: "List", items }, "json"));
    return 0;
  }
  console.log(renderList(r.policies, [
    { header: "KIND", value: (p) => p.kind },
    { header: "NAMESPACE", value: (p) => p.namespace ?? "" },
    { header: "NAME", value: (p) => p.name },
    { header: "LABELS", value: (p) => formatLabelList(p.labels) },
  ], "table"));
  console.log(`Revision: ${r.revision}`);
  return 0;
}

export async function policyDelete(
  api: AgentClient,
  rest: string[],
  v: Flags,
  format: Format,
): Promise<number> {
  if (rest[0] === undefined && v.labels === undefined && !v.all) {
    throw new UsageError("policy delete: give a NAME, --labels k=v,… or --all");
  }
  const query = { ...filterQuery(rest[0], v), ...(v.all ? { all: "true" } : {}) };
  const r = await api.request<{ revision: number; deleted: PolicyRef[] } & Realisation>(
    "DELETE",
    "/v1/policy",
    { query },
  );
  if (format !== "table") console.log(renderModel(r, format));
  else {
    for (const p of r.deleted) {
      console.log(`Deleted ${p.kind} ${p.namespace ? p.namespace + "/" : ""}${p.name}`);
    }
    console.log(`Revision: ${r.revision}`);
  }
  return reportRealisation(r);
}

function peer(side: "src" | "dst", v: Flags): Record<string, string | number> {
  const endpoint = v[`${side}-endpoint`];
  const ip = v[`${side}-ip`];
  const entity = v[`${side}-entity`];
  const given = [endpoint, ip, entity].filter((x) => x !== undefined);
  if (v[`${side}-labels`] !== undefined) {
    throw new UsageError(
      `policy trace: --${side}-labels needs --policy (offline); live traces take --${side}-endpoint, --${side}-ip or --${side}-entity`,
    );
  }
  if (given.length !== 1) {
    throw new UsageError(
      `policy trace: give exactly one of --${side}-endpoint, --${side}-ip, --${side}-entity`,
    );
  }
  if (endpoint !== undefined) {
    const ns = v[`${side}-namespace`];
    return { endpoint: ns && !endpoint.includes("/") ? `${ns}/${endpoint}` : endpoint };
  }
  return ip !== undefined ? { ip } : { entity: entity! };
}

export async function policyTraceLive(api: AgentClient, v: Flags, format: Format): Promise<number> {
  const args = traceArgsFromFlags(v);

  const from = peer("src", v);
  const to = peer("dst", v);
  const { from: _f, to: _t, ...flow } = flowInput(args, "", "");
  const verify = v["verify-kernel"] === true;
  const r = await api.request<FlowReport & { kernel?: KernelSide[]; agree?: boolean }>(
    "POST",
    verify ? "/v1/bpf/verify" : "/v1/policy/trace",
    { json: { from, to, ...flow } },
  );
  if (format !== "table") console.log(renderModel(r, format));
  else console.log([...r.trace, ...(verify ? kernelLines(r.kernel ?? []) : [])].join("\n"));
  return verify && r.agree === false ? 1 : 0;
}

interface KernelSide {
  side: string;
  endpoint: string;
  engine: { verdict: string; decision: string; cookie: number };
  kernel: { step: string; verdict: string; cookie: number };
  agree: boolean;
}

/** `--verify-kernel`: the kernel map entry each side's packet hits, and whether it agrees. */
function kernelLines(sides: KernelSide[]): string[] {
  if (sides.length === 0) return ["Kernel: no endpoint of this node is on either side"];
  return sides.map((s) =>
    `Kernel ${s.side} (${s.endpoint}): ${s.kernel.verdict} by ${s.kernel.step}` +
    `${s.kernel.cookie ? ` cookie 0x${s.kernel.cookie.toString(16)}` : ""}; engine: ` +
    `${s.engine.verdict} (${s.engine.decision}) → ${
      s.agree ? "kernel and engine agree" : "MISMATCH"
    }`
  );
}
