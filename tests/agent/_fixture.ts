/**
 * Agents for tests: in-process (`startAgent`: a Deno KV file in a temp dir, a recording sink,
 * the Hono app for `app.request()`), and as real processes (`spawnAgent`: `bin/cilia-agent` on
 * a temp socket, spoken to over the socket). Everything is removed by `close()`/`stop()`; the
 * process's log is kept for failure messages.
 */

import { Agent } from "../../agent/agent.ts";
import { type AgentConfig, resolveConfig } from "../../agent/config.ts";
import { createApi } from "../../agent/api/app.ts";
import { RecordingSink } from "../../agent/endpoint/datapath_sink.ts";
import { Logger } from "../../agent/log.ts";
import type { Hono } from "hono";

export const root = new URL("../../", import.meta.url).pathname;

export interface TestAgent {
  agent: Agent;
  app: Hono;
  sink: RecordingSink;
  dir: string;
  /** `app.request()` with a JSON body (or text), returning status, JSON (or text) and headers. */
  call(
    method: string,
    path: string,
    body?: unknown,
    headers?: Record<string, string>,
  ): Promise<Reply>;
  /** Stops the agent (the temp dir stays until `close()`). */
  stop(): Promise<void>;
  close(): Promise<void>;
}

export interface Reply {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
  headers: Headers;
}

/** Logs only when CILIA_TEST_LOG is set. */
export function testLogger(): Logger {
  const level = Deno.env.get("CILIA_TEST_LOG") ? "debug" : "silent";
  return new Logger({ level });
}

export async function startAgent(
  opts: { dir?: string; config?: Record<string, unknown> } = {},
): Promise<TestAgent> {
  const dir = opts.dir ?? await Deno.makeTempDir({ prefix: "cilia-agent-test-" });
  const sink = new RecordingSink();
  let agent: Agent;
  try {
    const config: AgentConfig = resolveConfig({
      stateDir: `${dir}/state`,
      socket: `${dir}/cilia.sock`,
      nodeName: "node-a",
      podCidr: "10.200.0.0/24",
      podCidrV6: "fd00:200::/64",
      leaseTtl: 5,
      identityGcInterval: 3600,
      ...opts.config,
    });
    agent = await Agent.start({
      config,
      sink,
      log: testLogger(),
      denokv: { sweepIntervalMs: 100, pollIntervalMs: 20 },
    });
  } catch (err) {
    if (opts.dir === undefined) await Deno.remove(dir, { recursive: true });
    throw err;
  }
  const app = createApi(agent);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await agent.close();
  };
  return {
    agent,
    app,
    sink,
    dir,
    call: (method, path, body, headers) => call(app, method, path, body, headers),
    stop,
    async close() {
      await stop();
      if (opts.dir === undefined) await Deno.remove(dir, { recursive: true });
    },
  };
}

async function call(
  app: Hono,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Reply> {
  const init: RequestInit = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    if (typeof body !== "string") {
      (init.headers as Record<string, string>)["content-type"] = "application/json";
    }
  }
  const res = await app.request(path, init);
  const text = await res.text();
  const isJson = (res.headers.get("content-type") ?? "").includes("json");
  return { status: res.status, body: isJson ? JSON.parse(text) : text, headers: res.headers };
}

/** A client for a socket, as the CLI talks to the agent. */
export class SocketClient {
  #client: Deno.HttpClient;
  constructor(readonly path: string) {
    this.#client = Deno.createHttpClient({ proxy: { transport: "unix", path } });
  }

  async call(method: string, path: string, body?: unknown): Promise<Reply> {
    const init = {
      method,
      client: this.#client,
      headers: { "content-type": "application/json" },
      ...(body !== undefined
        ? { body: typeof body === "string" ? body : JSON.stringify(body) }
        : {}),
    };
    const res = await fetch(`http://localhost${path}`, init as RequestInit);
    const text = await res.text();
    const isJson = (res.headers.get("content-type") ?? "").includes("json");
    return { status: res.status, body: isJson ? JSON.parse(text) : text, headers: res.headers };
  }

  close(): void {
    this.#client.close();
  }
}

export interface AgentProcess {
  socket: string;
  dir: string;
  api: SocketClient;
  /** The agent's log so far (JSON lines). */
  log(): string;
  /** Sends a signal and waits for the exit; returns the exit code. */
  kill(signal: Deno.Signal): Promise<number>;
  /** Kills the agent if it still runs and removes its dir (unless the dir was given). */
  stop(): Promise<void>;
}

/** Starts `bin/cilia-agent` with `args` (`--datapath none` unless given) and waits for healthz. */
export async function spawnAgent(
  opts: { node: string; args?: string[]; dir?: string },
): Promise<AgentProcess> {
  const dir = opts.dir ?? await Deno.makeTempDir({ prefix: `cilia-${opts.node}-` });
  const socket = `${dir}/cilia.sock`;
  const child = new Deno.Command(`${root}bin/cilia-agent`, {
    args: [
      "--state-dir",
      `${dir}/state`,
      "--socket",
      socket,
      "--node-name",
      opts.node,
      // These agents run in the test's own network namespace: never touch its kernel datapath.
      ...(opts.args?.includes("--datapath") ? [] : ["--datapath", "none"]),
      ...(opts.args ?? []),
    ],
    env: { CILIA_DENO: Deno.execPath() },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let log = "";
  const drained = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of child.stderr) log += dec.decode(chunk);
  })();
  let exit: number | undefined;
  const status = child.status.then((s) => (exit = s.code));
  const api = new SocketClient(socket);
  let stopped: Promise<void> | undefined;
  const proc: AgentProcess = {
    socket,
    dir,
    api,
    log: () => log,
    async kill(signal) {
      if (exit === undefined) child.kill(signal);
      await status;
      await drained;
      return exit!;
    },
    stop: () =>
      stopped ??= (async () => {
        if (exit === undefined) child.kill("SIGKILL");
        await status;
        await drained;
        api.close();
        if (opts.dir === undefined) await Deno.remove(dir, { recursive: true });
      })(),
  };
  // Generous: a first start on a loaded machine transpiles the agent (a cold cache) slowly.
  const deadline = Date.now() + 60_000;
  while (true) {
    if (exit !== undefined) {
      await proc.stop();
      throw new Error(`Agent ${opts.node} exited with ${exit} during startup:\n${log}`);
    }
    try {
      if ((await api.call("GET", "/v1/healthz")).status === 200) return proc;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await proc.stop();
      throw new Error(`Agent ${opts.node} did not become healthy within 60 s:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value, or fails after `timeoutMs` naming `what`. */
export async function eventually<T>(
  what: string,
  fn: () => Promise<T> | T,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (err) {
      last = err;
    }
    await sleep(50);
  }
  throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what} (last: ${String(last)})`);
}

export function endpointBody(
  name: string,
  labels: Record<string, string>,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return { name, namespace: "default", labels, ...extra };
}

export const POLICY_HTTP = await Deno.readTextFile(`${root}examples/policies/http-get-public.yaml`);
