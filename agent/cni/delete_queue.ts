/**
 * The CNI deletion queue: a DEL that cannot reach the agent is written as a file next to the
 * agent's socket (`<socket dir>/cni-delete-queue/`) and reported as done, so a runtime never
 * fails to remove a container because the agent was restarting; the agent replays the queue when
 * it starts. One file per attachment (container id + interface), so a repeated DEL overwrites.
 * Only file I/O here: what a DEL does is the agent's business.
 */

import type { CniDelRequest } from "./types.ts";

export function deleteQueueDir(socketPath: string): string {
  const slash = socketPath.lastIndexOf("/");
  // A socket path without "/" is in the current directory (slice(0, -1) would cut its last char).
  const dir = slash < 0 ? "." : socketPath.slice(0, slash) || "/";
  return `${dir}/cni-delete-queue`;
}

const fileName = (r: CniDelRequest) =>
  `${r.containerId}-${r.ifname}`.replace(/[^A-Za-z0-9_.-]/g, "_") + ".json";

/** Queues a DEL for the agent; throws when the queue cannot be written. */
export async function enqueueDelete(socketPath: string, req: CniDelRequest): Promise<string> {
  const dir = deleteQueueDir(socketPath);
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  const path = `${dir}/${fileName(req)}`;
  const tmp = `${path}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(req) + "\n", { mode: 0o600 });
  await Deno.rename(tmp, path);
  return path;
}

export interface QueuedDelete {
  path: string;
  /** undefined when the file is not a valid request (it is reported and removed). */
  request?: unknown;
}

/** The queued DELs, oldest name first; a missing queue is empty. */
export async function readDeleteQueue(socketPath: string): Promise<QueuedDelete[]> {
  const dir = deleteQueueDir(socketPath);
  const out: QueuedDelete[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (!e.isFile || !e.name.endsWith(".json")) continue;
      const path = `${dir}/${e.name}`;
      try {
        out.push({ path, request: JSON.parse(await Deno.readTextFile(path)) });
      } catch {
        out.push({ path });
      }
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return out.sort((a, b) => a.path.localeCompare(b.path));
}
