// Live commands that talk to the agent over its API. Filled in with the agent (issue 3).

import type { Flags } from "./main.ts";
import { type Format, UsageError } from "./output.ts";

export const LIVE_COMMANDS = new Set<string>(["status", "endpoint", "identity", "ipam", "policy"]);
export const LIVE_POLICY = new Set<string>(["import", "get", "delete", "trace"]);

export function runLive(
  cmd: string,
  sub: string | undefined,
  _rest: string[],
  _v: Flags,
  _f: Format,
): Promise<number> {
  throw new UsageError(
    `"${cmd}${sub ? " " + sub : ""}" needs the cilia agent, which is not part of this build yet`,
  );
}
