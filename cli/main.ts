// The `cilia` command: parses arguments, dispatches to a command, prints errors on stderr and
// exits non-zero on failure (1: the command failed, 2: bad usage). Offline `policy` commands use
// the engine directly; live commands talk to the agent's API.

import { parseArgs } from "node:util";
import { PolicyValidationError } from "@cilia/policy-wasm";
import { parseFormat, UsageError } from "./output.ts";
import { policyLint, policyValidate } from "./policy_check.ts";
import { policyTest } from "./policy_test.ts";
import { policyReplay } from "./replay.ts";
import { policySuggest } from "./suggest.ts";
import { ui } from "./ui.ts";
import { policyTrace, traceArgsFromFlags } from "./policy_trace.ts";
import { LIVE_COMMANDS, LIVE_POLICY, runLive } from "./live.ts";
import { VISIBILITY_COMMANDS } from "./visibility.ts";
import { globalHelp, helpFor, versionText } from "./help.ts";
import { completionScript } from "./completion.ts";
import { paint, setupColor, severity } from "./color.ts";

/** The global help page (rendered from the command registry, commands.ts). */
export const HELP: string = globalHelp();

const OPTIONS = {
  output: { type: "string", short: "o" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean" },
  "no-color": { type: "boolean" },
  disable: { type: "string", multiple: true },
  "allow-empty": { type: "boolean" },
  junit: { type: "string" },
  host: { type: "string", short: "H" },
  verbose: { type: "boolean" },
  "verify-kernel": { type: "boolean" },
  live: { type: "boolean" },
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
  input: { type: "string" },
  "from-agent": { type: "boolean" },
  last: { type: "string" },
  "scenario-out": { type: "string" },
  listen: { type: "string" },
  "allow-remote": { type: "boolean" },
  "web-dir": { type: "string" },
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
  return v.live === true ||
    (v["src-endpoint"] !== undefined || v["dst-endpoint"] !== undefined) && !v.scenario &&
      !v.policy;
}

/** Help, version and completion: the commands that need no engine and no agent. */
async function builtin(v: Flags, pos: string[]): Promise<number | undefined> {
  if (v.version) {
    console.log(await versionText());
    return 0;
  }
  if (pos[0] === "help") {
    console.log(helpFor(pos.length === 1 && v.help ? ["help"] : pos.slice(1)));
    return 0;
  }
  if (v.help) {
    console.log(helpFor(pos));
    return 0;
  }
  if (pos.length === 0) {
    console.log(HELP);
    return 2;
  }
  if (pos[0] === "completion") {
    console.log(completionScript(pos[1]));
    return 0;
  }
  return undefined;
}

export async function main(argv: string[]): Promise<number> {
  // `deno task cli -- …` passes the separator through.
  if (argv[0] === "--") argv = argv.slice(1);
  // observe, monitor, bpf: their own flags (Hubble's filter vocabulary). Global options given
  // before the command (`cilia -H unix:///x.sock observe …`) are passed on after it.
  const globals: string[] = [];
  let at = 0;
  while (at < argv.length) {
    const a = argv[at]!;
    if ((a === "-H" || a === "--host") && at + 1 < argv.length) globals.push(a, argv[at + 1]!);
    else if (a.startsWith("--host=") || a === "--no-color") globals.push(a);
    else break;
    at += a === "-H" || a === "--host" ? 2 : 1;
  }
  const visibility = VISIBILITY_COMMANDS[argv[at] ?? ""];
  if (visibility) return await visibility([...argv.slice(at + 1), ...globals]);
  const { values: v, positionals: pos } = parse(argv);
  setupColor({ noColor: v["no-color"] });
  const done = await builtin(v, pos);
  if (done !== undefined) return done;
  const [cmd, sub, ...rest] = pos;
  const isSuggest = cmd === "policy" && sub === "suggest";
  const format = parseFormat(v.output, isSuggest ? "yaml" : "table");
  const check = { disable: v.disable ?? [], allowEmpty: v["allow-empty"] === true };
  if (cmd === "policy" && sub === "validate") return await policyValidate(rest, format, check);
  if (cmd === "policy" && sub === "lint") {
    return await policyLint(rest, format, check, v.live ? { host: v.host } : undefined);
  }
  if (cmd === "policy" && sub === "test") {
    return await policyTest(rest, format, { junit: v.junit });
  }
  const traffic = { input: v.input, fromAgent: v["from-agent"], last: v.last, host: v.host };
  if (cmd === "policy" && sub === "replay") {
    return await policyReplay({ ...traffic, policy: [...(v.policy ?? []), ...rest] }, format);
  }
  if (isSuggest) return await policySuggest({ ...traffic, scenarioOut: v["scenario-out"] }, format);
  if (cmd === "ui") return await ui(v);
  if (cmd === "policy" && sub === "trace" && !isLiveTrace(v)) {
    return await policyTrace(traceArgsFromFlags(v, rest), format);
  }
  if (cmd && LIVE_COMMANDS.has(cmd) && (cmd !== "policy" || LIVE_POLICY.has(sub ?? ""))) {
    return await runLive(cmd, sub, rest, v, format);
  }
  throw new UsageError(`Unknown command "${pos.join(" ")}": run "cilia help"`);
}

/** Prints an error the way users read it; returns the exit code (2 usage, 1 anything else). */
export function reportError(e: unknown): number {
  if (e instanceof UsageError) {
    console.error(`cilia: ${severity("error")}: ${e.message}`);
    return 2;
  }
  if (e instanceof PolicyValidationError) {
    for (const i of e.issues) {
      const at = [i.file, i.line !== undefined ? `${i.line}:${i.column ?? 1}` : ""];
      console.error(
        `${at.filter(Boolean).join(":")}: ${severity("error")}: ${i.message}${
          i.path ? paint("dim", ` (at ${i.path})`) : ""
        }`,
      );
    }
    return 1;
  }
  console.error(`cilia: ${severity("error")}: ${e instanceof Error ? e.message : String(e)}`);
  if (Deno.env.get("CILIA_DEBUG")) console.error(e);
  return 1;
}

if (import.meta.main) {
  let code: number;
  try {
    code = await main(Deno.args);
  } catch (e) {
    code = reportError(e);
  }
  Deno.exit(code);
}
