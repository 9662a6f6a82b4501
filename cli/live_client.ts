// A small client for the agent's API over its unix socket: `-H/--host unix:///path` or
// CILIA_HOST, else the default socket. Turns a missing or refused socket into one clear error
// that names it and says how to start the agent, and API errors (`{error: {…}}`) into
// `ApiRequestError` (policy validation issues into `PolicyValidationError`).

import { PolicyValidationError, type ValidationIssue } from "@cilia/policy-wasm";
import { UsageError } from "./output.ts";

export const DEFAULT_SOCKET = "/var/run/cilia/cilia.sock";

export class AgentUnreachableError extends Error {
  override name = "AgentUnreachableError";
}

export class ApiRequestError extends Error {
  override name = "ApiRequestError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly hint?: string,
    readonly details?: unknown,
  ) {
    super(hint ? `${message}\nhint: ${hint}` : message);
  }
}

/** The socket path from `--host`, then CILIA_HOST, then the default. */
export function socketPath(host: string | undefined): string {
  const h = host ?? Deno.env.get("CILIA_HOST") ?? `unix://${DEFAULT_SOCKET}`;
  if (h.startsWith("unix://")) return h.slice("unix://".length);
  if (h.startsWith("/")) return h;
  throw new UsageError(`Unsupported host "${h}": expected unix:///path/to/cilia.sock`);
}

function unreachable(path: string, err: unknown): AgentUnreachableError {
  const text = err instanceof Error ? `${err.message} ${(err.cause as Error)?.message ?? ""}` : "";
  const why = /os error 2\b|No such file/i.test(text)
    ? "no such socket"
    : /os error 111\b|refused/i.test(text)
    ? "connection refused (is the agent running?)"
    : /os error 13\b|Permission denied/i.test(text)
    ? "permission denied (the socket is root-only: run as root)"
    : text.trim() || "no answer";
  return new AgentUnreachableError(
    `Cannot reach the cilia agent at unix://${path}: ${why}. Start it with "bin/cilia-agent" ` +
      `(or "deno task agent"), or point -H/--host at its socket`,
  );
}

export interface RequestOptions {
  json?: unknown;
  text?: string;
  contentType?: string;
  accept?: string;
  query?: Record<string, string | undefined>;
}

export class AgentClient {
  readonly path: string;
  #client: Deno.HttpClient;

  constructor(path: string) {
    this.path = path;
    this.#client = Deno.createHttpClient({ proxy: { transport: "unix", path } });
  }

  /** The parsed JSON (or text) of a successful answer; throws on errors. */
  async request<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const url = new URL(`http://localhost${path}`);
    for (const [k, v] of Object.entries(opts.query ?? {})) {
      if (v !== undefined) url.searchParams.set(k, v);
    }
    const headers: Record<string, string> = { accept: opts.accept ?? "application/json" };
    let body: string | undefined;
    if (opts.json !== undefined) {
      body = JSON.stringify(opts.json);
      headers["content-type"] = "application/json";
    } else if (opts.text !== undefined) {
      body = opts.text;
      headers["content-type"] = opts.contentType ?? "application/yaml";
    }
    let res: Response;
    try {
      const init = { method, headers, client: this.#client, ...(body ? { body } : {}) };
      res = await fetch(url, init as RequestInit);
    } catch (err) {
      throw unreachable(this.path, err);
    }
    const text = await res.text();
    const isJson = (res.headers.get("content-type") ?? "").includes("json");
    const value = isJson && text !== "" ? JSON.parse(text) : text;
    if (!res.ok) throw apiError(res.status, value);
    return value as T;
  }

  /** The body of a successful answer as a stream (NDJSON), for follows; throws on errors. */
  async stream(
    path: string,
    query: URLSearchParams,
    signal?: AbortSignal,
  ): Promise<ReadableStream<Uint8Array>> {
    const url = new URL(`http://localhost${path}`);
    url.search = query.toString();
    let res: Response;
    try {
      res = await fetch(url, {
        headers: { accept: "application/x-ndjson" },
        client: this.#client,
        ...(signal ? { signal } : {}),
      } as RequestInit);
    } catch (err) {
      throw unreachable(this.path, err);
    }
    if (!res.ok) {
      const text = await res.text();
      let value: unknown = text;
      try {
        value = JSON.parse(text);
      } catch { /* not JSON */ }
      throw apiError(res.status, value);
    }
    return res.body ?? new ReadableStream({ start: (c) => c.close() });
  }

  close(): void {
    this.#client.close();
  }
}

function apiError(status: number, value: unknown): Error {
  const e =
    (value as { error?: { code?: string; message?: string; hint?: string; details?: unknown } })
      ?.error;
  if (e?.code === "invalid_policy") {
    const issues = (e.details as { issues?: ValidationIssue[] })?.issues;
    if (Array.isArray(issues) && issues.length > 0) return new PolicyValidationError(issues);
  }
  const message = e?.message ?? `The agent answered HTTP ${status}: ${String(value).slice(0, 200)}`;
  return new ApiRequestError(status, e?.code ?? "http_error", message, e?.hint, e?.details);
}
