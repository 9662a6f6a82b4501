/**
 * The plugin's connection to the agent: JSON over HTTP/1.1 on the agent's unix socket (_http.ts,
 * one connection per request). A socket that is missing or refuses is "try again later" (or "not
 * available" for STATUS) naming the socket; an API error becomes a CniError with the code
 * protocol.ts maps it to and the agent's message.
 * When asked, it reports each request's timing with the agent's own `Server-Timing` figures.
 */

import { type HttpAnswer, request } from "./_http.ts";
import { CniError } from "./config.ts";
import { CNI_ERRORS, cniCodeOf } from "./protocol.ts";

const TIMEOUT_MS = 120_000;

/** One request's timing: wall-clock epoch milliseconds, and the agent's `Server-Timing`. */
export interface RequestTiming {
  path: string;
  sentAt: number;
  answeredAt: number;
  /** `Server-Timing` metrics of the answer, in ms (e.g. `{agent: 12.5}`). */
  server: Record<string, number>;
}

/** Epoch milliseconds with sub-millisecond precision, comparable across processes. */
export const epochMs = (): number => performance.timeOrigin + performance.now();

/** `agent;dur=12.5, parse;dur=0.1` → `{agent: 12.5, parse: 0.1}`. */
export function parseServerTiming(header: string | null): Record<string, number> {
  const out: Record<string, number> = {};
  for (const metric of (header ?? "").split(",")) {
    const [name, ...params] = metric.split(";").map((s) => s.trim());
    const dur = params.find((p) => p.startsWith("dur="));
    if (name && dur && Number.isFinite(Number(dur.slice(4)))) out[name] = Number(dur.slice(4));
  }
  return out;
}

export class AgentConnection {
  readonly path: string;
  #unreachableCode: number;
  #onTiming: ((t: RequestTiming) => void) | undefined;

  constructor(
    path: string,
    opts: { unreachableCode?: number; onTiming?: (t: RequestTiming) => void } = {},
  ) {
    this.path = path;
    this.#unreachableCode = opts.unreachableCode ?? CNI_ERRORS.tryAgainLater;
    this.#onTiming = opts.onTiming;
  }

  get<T = unknown>(path: string): Promise<T> {
    return this.#request<T>("GET", path);
  }

  post<T = unknown>(path: string, body: unknown): Promise<T> {
    return this.#request<T>("POST", path, body);
  }

  async #request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const sentAt = epochMs();
    let res: HttpAnswer;
    try {
      res = await request(this.path, {
        method,
        target: path,
        timeoutMs: TIMEOUT_MS,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
    } catch (err) {
      if (err instanceof SyntaxError) {
        throw new CniError(CNI_ERRORS.io, `Unexpected answer from the cilia agent: ${err.message}`);
      }
      throw new CniError(
        this.#unreachableCode,
        `Cannot reach the cilia agent at unix://${this.path}: ${unreachable(err)}`,
        "start the agent (bin/cilia-agent), or set agentSocket in the network configuration",
      );
    }
    const text = new TextDecoder().decode(res.body);
    this.#onTiming?.({
      path,
      sentAt,
      answeredAt: epochMs(),
      server: parseServerTiming(res.headers.get("server-timing") ?? null),
    });
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new CniError(
        CNI_ERRORS.io,
        `Unexpected answer from the cilia agent (${res.status}): ${text.slice(0, 200)}`,
      );
    }
    if (res.status < 200 || res.status > 299) {
      const e = (value as { error?: { code?: string; message?: string; hint?: string } }).error;
      throw new CniError(
        cniCodeOf(e?.code ?? ""),
        e?.message ?? `The cilia agent answered ${res.status}`,
        e?.hint,
      );
    }
    return value as T;
  }

  /** Nothing to release: every request has its own connection. */
  close(): void {}
}

function unreachable(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "no such socket";
  if (err instanceof Deno.errors.ConnectionRefused) return "connection refused";
  if (err instanceof DOMException && err.name === "TimeoutError") {
    return `no answer within ${TIMEOUT_MS / 1000} s`;
  }
  return err instanceof Error ? err.message : String(err);
}
