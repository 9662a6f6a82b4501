// Help pages and the version line, rendered from the command registry (commands.ts): the global
// page (`cilia --help`, `cilia help`), one page per command (`cilia policy trace --help`,
// `cilia help policy trace`), and `cilia --version`. Must not dispatch commands.

import { engineBuildId } from "@cilia/policy-wasm";
import {
  COMMANDS,
  type CommandSpec,
  EXIT_CODES,
  findCommand,
  type FlagHelp,
  GLOBAL_FLAGS,
  subcommands,
} from "./commands.ts";
import { UsageError } from "./output.ts";
import cliConfig from "./deno.json" with { type: "json" };

export const VERSION: string = cliConfig.version;

const GROUPS: [CommandSpec["group"], string][] = [
  ["offline", "Offline policy commands (no agent needed):"],
  ["live", "Live commands (talk to the agent; -H/--host unix:///path or CILIA_HOST):"],
  ["other", "Other:"],
];

function columns(rows: [string, string][], width?: number): string[] {
  const indent = 2;
  const w = width ?? Math.min(28, Math.max(...rows.map(([a]) => a.length)));
  return rows.map(([a, b]) =>
    a.length > w
      ? `${" ".repeat(indent)}${a}\n${" ".repeat(indent + w + 2)}${b}`
      : `${" ".repeat(indent)}${a.padEnd(w)}  ${b}`
  );
}

function flagText(f: FlagHelp): string {
  return `${f.short ? `-${f.short}, ` : "    "}--${f.name}${f.arg ? ` ${f.arg}` : ""}`;
}

export function globalHelp(): string {
  const out = [
    "cilia — container network security: policy engine, agent and datapath",
    "",
    "Usage: cilia <command> [flags]     cilia help <command>     cilia <command> --help",
  ];
  const width = Math.max(...COMMANDS.map((c) => c.name.length), 18);
  for (const [group, title] of GROUPS) {
    const cmds = COMMANDS.filter((c) => c.group === group);
    if (cmds.length === 0) continue;
    out.push("", title, ...columns(cmds.map((c) => [c.name, c.summary]), width));
  }
  out.push(
    "",
    "Global flags:",
    ...columns(GLOBAL_FLAGS.map((f) => [flagText(f), f.help]), width),
  );
  out.push("", "Every listing takes -o table|json|yaml.", "", EXIT_CODES);
  out.push("", "Example:", "  cilia policy test examples/policies/*.scenario.yaml");
  return out.join("\n");
}

export function commandHelp(c: CommandSpec): string {
  const out = [`cilia ${c.name} — ${c.summary}`, "", `Usage: ${c.usage}`];
  if (c.flags && c.flags.length > 0) {
    out.push("", "Flags:", ...columns(c.flags.map((f) => [flagText(f), f.help])));
  }
  if (c.details) out.push("", c.details);
  out.push("", "Example:", ...c.example.split("\n").map((l) => `  ${l}`));
  return out.join("\n");
}

/** A page listing the subcommands of a group word ("cilia policy --help"). */
function groupHelp(word: string, cmds: CommandSpec[]): string {
  return [
    `cilia ${word} — subcommands:`,
    "",
    ...columns(cmds.map((c) => [c.name, c.summary])),
    "",
    `Run "cilia help ${cmds[0]!.name}" for one of them.`,
  ].join("\n");
}

/** Help for the words given (command words, without flags); the global page when empty. */
export function helpFor(words: readonly string[]): string {
  if (words.length === 0) return globalHelp();
  const hit = findCommand(words);
  if (hit) return commandHelp(hit);
  const group = subcommands(words[0]!);
  if (group.length > 0 && words.length === 1) return groupHelp(words[0]!, group);
  throw new UsageError(
    group.length > 0
      ? `Unknown command "${words.join(" ")}": expected one of ${
        group.map((c) => `"${c.name}"`).join(", ")
      }`
      : `Unknown command "${words.join(" ")}": run "cilia help"`,
  );
}

export async function versionText(): Promise<string> {
  return `cilia ${VERSION} (policy engine ${await engineBuildId()}, deno ${Deno.version.deno})`;
}
