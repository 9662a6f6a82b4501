// `cilia policy suggest --input FLOWS | --from-agent`: least-privilege CiliumNetworkPolicies for
// the observed connections (suggestPolicies(), policy-wasm/src/suggest_flows.ts, the browser's
// code too) as YAML that `policy import` applies as is (`-o json`: a list), and with
// `--scenario-out FILE` the scenario that tests them (observed connections allowed, near misses
// and dropped connections denied) for `cilia policy test`.

import { policiesYaml, scenarioYaml, suggestPolicies, suggestScenario } from "@cilia/policy-wasm";
import { type Format, UsageError } from "./output.ts";
import { readTraffic, type TrafficArgs } from "./replay.ts";

export async function policySuggest(
  a: TrafficArgs & { scenarioOut?: string | undefined },
  format: Format,
): Promise<number> {
  const traffic = await readTraffic(a, "policy suggest");
  const s = suggestPolicies(traffic);
  if (s.policies.length === 0) {
    throw new Error(
      `No allowed connection between workloads in ${traffic.flows} flow(s): nothing to suggest`,
    );
  }
  if (format === "table") throw new UsageError("policy suggest: -o yaml (default) or -o json");
  console.log(
    format === "json" ? JSON.stringify(s.policies, null, 2) : policiesYaml(s.policies).trimEnd(),
  );
  if (a.scenarioOut !== undefined) {
    await Deno.writeTextFile(a.scenarioOut, scenarioYaml(suggestScenario(s, traffic)));
    console.error(
      `cilia policy suggest: ${s.policies.length} policies for ${s.connections.length} connection(s); tests in ${a.scenarioOut} (run "cilia policy test ${a.scenarioOut}")`,
    );
  }
  return 0;
}
