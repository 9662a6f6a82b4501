// `cilia policy replay --policy DRAFT --input FLOWS`: the observed connections (cilia's
// `observe -o json`, Hubble's `hubble observe -o json`, or the agent's last flows with
// `--from-agent`) judged again with a draft policy by replayTraffic() (policy-wasm/src/replay.ts,
// the browser's code too); lists the connections whose verdict would change, newly denied first,
// with the draft's reason. Exit 1 when a connection allowed today would be denied (for CI).

import {
  type ObservedTraffic,
  observeFlows,
  PolicyEngine,
  type PolicySource,
  type ReplayReport,
  replaySummaryText,
  replayTraffic,
} from "@cilia/policy-wasm";
import { readInputs } from "./files.ts";
import { type Format, renderModel, table, UsageError } from "./output.ts";
import { AgentClient, socketPath } from "./live_client.ts";
import { paint } from "./color.ts";

export interface TrafficArgs {
  input?: string | undefined;
  fromAgent?: boolean | undefined;
  last?: string | undefined;
  host?: string | undefined;
}

/** The flows of `--input FILE` (or "-") or, with `--from-agent`, the agent's last flows. */
export async function readTraffic(a: TrafficArgs, command: string): Promise<ObservedTraffic> {
  if ((a.input === undefined) === (a.fromAgent !== true)) {
    throw new UsageError(`${command}: give --input FLOWS.json (or -) or --from-agent`);
  }
  if (a.last !== undefined && !/^\d+$/.test(a.last)) {
    throw new UsageError(`Invalid --last "${a.last}": expected a count`);
  }
  let text: string;
  if (a.input !== undefined) {
    text = (await readInputs([a.input], { ext: /./ }))[0]!.text;
  } else {
    const api = new AgentClient(socketPath(a.host));
    try {
      const q = new URLSearchParams({ last: a.last ?? "4095" });
      text = await new Response(await api.stream("/v1/flows", q)).text();
    } finally {
      api.close();
    }
  }
  try {
    return observeFlows(text);
  } catch (e) {
    throw new Error(`Cannot read flows from "${a.input ?? "the agent"}": ${(e as Error).message}`);
  }
}

function render(r: ReplayReport, format: Format): string {
  if (format !== "table") return renderModel(r, format);
  const rows = r.changes.map((c) => ({
    change: c.change === "newly-denied"
      ? paint("red", "newly denied")
      : paint("green", "newly allowed"),
    connection: c.connection,
    flows: c.flows,
    reason: c.reason,
  }));
  const body = rows.length > 0
    ? table(rows, [
      { header: "CHANGE", value: (x) => x.change },
      { header: "CONNECTION", value: (x) => x.connection },
      { header: "FLOWS", value: (x) => x.flows },
      { header: "THE DRAFT SAYS", value: (x) => x.reason },
    ]) + "\n"
    : "";
  return body + replaySummaryText(r.summary);
}

export async function policyReplay(
  a: TrafficArgs & { policy: string[] },
  format: Format,
): Promise<number> {
  if (a.policy.length === 0) {
    throw new UsageError("policy replay: give the draft with --policy FILE (repeatable)");
  }
  const traffic = await readTraffic(a, "policy replay");
  const sources: PolicySource[] = (await readInputs(a.policy)).map((f) => ({
    text: f.text,
    file: f.path,
  }));
  const engine = await PolicyEngine.create();
  try {
    const report = replayTraffic(engine, traffic, sources);
    console.log(render(report, format));
    return report.summary.newlyDenied > 0 ? 1 : 0;
  } finally {
    engine.close();
  }
}
