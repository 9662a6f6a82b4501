/**
 * `/v1/debug/*`, served only with `--debug-api true`. `POST /v1/debug/gc` runs full V8 garbage
 * collections and answers the memory figures after them (what a leak hunt compares: heap after a
 * full collection, not whatever the last minor one left), then returns the C allocator's free
 * pages to the kernel (glibc `malloc_trim`) and answers the resident set after that too (what the
 * process still holds, rather than what the allocator keeps for later). `POST
 * /v1/debug/heap-snapshot` writes a V8 heap snapshot into the state dir and answers its path
 * (open it in Chrome DevTools or compare two with `scripts/bench/_heap_diff.ts`). Both stop the
 * agent's event loop while they run (a collection takes tens of ms, a snapshot seconds), so they
 * are off by default.
 */

import type { Hono } from "hono";
import { writeHeapSnapshot } from "node:v8";
import type { Agent } from "../agent.ts";
import { ApiError } from "./errors.ts";

/** The agent's memory after full collections, bytes. */
export interface MemoryAfterGc {
  rss: number;
  /** Resident set after the collections and `malloc_trim(0)`; absent without glibc. */
  rssTrimmed?: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  /** The policy engine's WASM memory (it never shrinks) and the strings it holds interned. */
  wasm: number;
  engineStrings: number;
  /** Wall time of the collections, ms. */
  gcMs: number;
}

/**
 * Two full collections with a turn of the event loop between them: the first runs finalizers
 * and weak callbacks (ArrayBuffer backing stores, resources of closed streams), which the second
 * then frees. Each is V8's "last resort" collection (several passes that also drop what V8 only
 * caches: compiled code of cold functions, lookup caches), as a heap snapshot does: a plain major
 * GC leaves those, and they grow for a while as more code runs, which looks like a slow leak.
 * Throws when the process has no `gc` (it runs without `--expose-gc`).
 */
export async function collectFully(
  engine: { memoryBytes: number; internedStrings: number },
): Promise<MemoryAfterGc> {
  const gc = (globalThis as { gc?: (o?: Record<string, string>) => void }).gc;
  if (gc === undefined) {
    throw new ApiError(
      501,
      "gc_unavailable",
      "This agent runs without --v8-flags=--expose-gc, so it cannot collect on request",
      { hint: "start it with bin/cilia-agent or deno task agent, which pass the flag" },
    );
  }
  const full = { type: "major", execution: "sync", flavor: "last-resort" };
  const started = performance.now();
  gc(full);
  await new Promise((r) => setTimeout(r, 0));
  gc(full);
  const gcMs = performance.now() - started;
  const { rss, heapUsed, heapTotal, external } = Deno.memoryUsage();
  const trimmed = mallocTrim() ? { rssTrimmed: Deno.memoryUsage().rss } : {};
  return {
    rss,
    ...trimmed,
    heapUsed,
    heapTotal,
    external,
    wasm: engine.memoryBytes,
    engineStrings: engine.internedStrings,
    gcMs: Math.round(gcMs * 10) / 10,
  };
}

let libc: { symbols: { malloc_trim: (pad: bigint) => number } } | null | undefined;

/** glibc's `malloc_trim(0)`: free heap pages go back to the kernel. False where there is none. */
function mallocTrim(): boolean {
  if (libc === undefined) {
    try {
      libc = Deno.dlopen("libc.so.6", { malloc_trim: { parameters: ["usize"], result: "i32" } });
    } catch {
      libc = null;
    }
  }
  if (!libc) return false;
  libc.symbols.malloc_trim(0n);
  return true;
}

export function registerDebugRoutes(app: Hono, agent: Agent): void {
  if (!agent.config.debugApi) return;

  app.post("/v1/debug/gc", async (c) => c.json(await collectFully(agent.engine)));

  app.post("/v1/debug/heap-snapshot", async (c) => {
    await collectFully(agent.engine);
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    const path = writeHeapSnapshot(`${agent.config.stateDir}/heap-${stamp}.heapsnapshot`);
    return c.json({ path });
  });
}
