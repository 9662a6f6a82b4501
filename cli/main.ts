// The `cilia` command: parses arguments, dispatches to a command, prints errors on stderr and
// exits non-zero on failure (1: the command failed, 2: bad usage). Offline `policy` commands use
// the engine directly; live commands talk to the agent's API.

import { parseArgs } from "node:util";
import { PolicyValidationError } from "@cilia/policy-wasm";
import { parseFormat, UsageError } from "./output.ts";
import { policyLint, policyValidate } from "./policy_check.ts";
import { policyTest } from "./policy_test.ts";
import { policyTrace, traceArgsFromFlags } from "./policy_trace.ts";
import { LIVE_COMMANDS, LIVE_POLICY, runLive } from "./live.ts";

export const HELP = `cilia — container network security: policy engine, agent and datapath

Usage: cilia <command> [flags]

Offline policy commands (no agent needed):
  policy validate FILE…     check policy files; exit 1 with located errors
  policy lint FILE…         warn about known footguns
  policy test FILE…         run scenario files ("policy tests"); exit 1 on a failed query
  policy trace [flags]      judge one flow and print the decision chain
      --policy FILE…  --scenario FILE
      --src-labels k=v,… | --src-ip IP | --src-entity E | --src-endpoint NAME  [--src-namespace NS]
      --dst-labels …     | --dst-ip …   | --dst-entity …  | --dst-endpoint …   [--dst-namespace NS]
      --dport 80/TCP  [--icmp-type 8]
      --http-method M --http-path P --http-host H --http-header 'K: V'
      --kafka-role produce|consume --kafka-api-key K --kafka-topic T --kafka-client-id C

Live commands (talk to the agent; -H/--host unix:///path or CILIA_HOST):
  status [--brief] [--wait [--timeout 30s]]
  endpoint list|get ID               identity list|get ID
  node list                          ipam [list]|allocate [--family 4|6] [--owner O]|release IP
  policy import FILE…                policy get [NAME] [-n NS] [--kind K] [--labels k=v]
  policy delete NAME [-n NS] [--kind K] | --labels k=v,… | --all
  policy trace --src-endpoint ID|NS/NAME --dst-endpoint … --dport 80/TCP [--http-… flags]

Every listing takes -o table|json|yaml.`;

const OPTIONS = {
  output: { type: "string", short: "o" },
  help: { type: "boolean", short: "h" },
  host: { type: "string", short: "H" },
  policy: { type: "string", multiple: true },
  scenario: { type: "string" },
  "src-labels": { type: "string" },
  "src-ip": { type: "string" },
  "src-entity": { type: "string" },
  "src-endpoint": { type: "string" },
  "src-namespace": { type: "string" },
  "dst-labels": { type: "string" },
  "dst-ip": { type: "string" },
  "dst-entity": { type: "string" },
  "dst-endpoint": { type: "string" },
  "dst-namespace": { type: "string" },
  dport: { type: "string" },
  "icmp-type": { type: "string" },
  "http-method": { type: "string" },
  "http-path": { type: "string" },
  "http-host": { type: "string" },
  "http-header": { type: "string", multiple: true },
  "kafka-role": { type: "string" },
  "kafka-api-key": { type: "string" },
  "kafka-topic": { type: "string", multiple: true },
  "kafka-client-id": { type: "string" },
  "kafka-api-version": { type: "string" },
  brief: { type: "boolean" },
  wait: { type: "boolean" },
  timeout: { type: "string" },
  name: { type: "string" },
  namespace: { type: "string", short: "n" },
  labels: { type: "string" },
  kind: { type: "string" },
  all: { type: "boolean" },
  family: { type: "string" },
  owner: { type: "string" },
} as const;

export type Flags = ReturnType<typeof parse>["values"];

function parse(argv: string[]) {
  try {
    return parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message.replace(/\. To specify.*$/s, ""));
  }
}

function isLiveTrace(v: Flags): boolean {
  return (v["src-endpoint"] !== undefined || v["dst-endpoint"] !== undefined) && !v.scenario &&
    !v.policy;
}

export async function main(argv: string[]): Promise<number> {
  // `deno task cli -- …` passes the separator through.
  if (argv[0] === "--") argv = argv.slice(1);
  const { values: v, positionals: pos } = parse(argv);
  if (v.help || pos.length === 0) {
    console.log(HELP);
    return pos.length === 0 && !v.help ? 2 : 0;
  }
  const format = parseFormat(v.output);
  const [cmd, sub, ...rest] = pos;
  if (cmd === "policy" && sub === "validate") return await policyValidate(rest, format);
  if (cmd === "policy" && sub === "lint") return await policyLint(rest, format);
  if (cmd === "policy" && sub === "test") return await policyTest(rest, format);
  if (cmd === "policy" && sub === "trace" && !isLiveTrace(v)) {
    return await policyTrace(traceArgsFromFlags(v, rest), format);
  }
  if (cmd && LIVE_COMMANDS.has(cmd) && (cmd !== "policy" || LIVE_POLICY.has(sub ?? ""))) {
    return await runLive(cmd, sub, rest, v, format);
  }
  throw new UsageError(`Unknown command "${pos.join(" ")}": run "cilia --help"`);
}

if (import.meta.main) {
  let code: number;
  try {
    code = await main(Deno.args);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`cilia: ${e.message}`);
      code = 2;
    } else if (e instanceof PolicyValidationError) {
      for (const i of e.issues) {
        console.error(
          `${
            [i.file, i.line !== undefined ? `${i.line}:${i.column ?? 1}` : ""].filter(Boolean).join(
              ":",
            )
          }: error: ${i.message}${i.path ? ` (at ${i.path})` : ""}`,
        );
      }
      code = 1;
    } else {
      console.error(`cilia: ${e instanceof Error ? e.message : String(e)}`);
      if (Deno.env.get("CILIA_DEBUG")) console.error(e);
      code = 1;
    }
  }
  Deno.exit(code);
}
