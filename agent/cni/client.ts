/**
 * The plugin's connection to the agent: JSON over HTTP on the agent's unix socket. A socket that
 * is missing or refuses is "try again later" (or "not available" for STATUS) naming the socket;
 * an API error becomes a CniError with the code cni/types.ts maps it to and the agent's message.
 */

import { CniError } from "./config.ts";
import { CNI_ERRORS, cniCodeOf } from "./types.ts";

const TIMEOUT_MS = 120_000;

export class AgentConnection {
  readonly path: string;
  #client: Deno.HttpClient;
  #unreachableCode: number;

  constructor(path: string, opts: { unreachableCode?: number } = {}) {
    this.path = path;
    this.#client = Deno.createHttpClient({ proxy: { transport: "unix", path } });
    this.#unreachableCode = opts.unreachableCode ?? CNI_ERRORS.tryAgainLater;
  }

  get<T = unknown>(path: string): Promise<T> {
    return this.#request<T>("GET", path);
  }

  post<T = unknown>(path: string, body: unknown): Promise<T> {
    return this.#request<T>("POST", path, body);
  }

  async #request<T>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`http://localhost${path}`, {
        method,
        client: this.#client,
        headers: { "content-type": "application/json", accept: "application/json" },
        signal: AbortSignal.timeout(TIMEOUT_MS),
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      } as RequestInit);
    } catch (err) {
      const text = `${(err as Error)?.message ?? err} ${
        ((err as Error)?.cause as Error)?.message ?? ""
      }`;
      const why = /os error 2\b|No such file/i.test(text)
        ? "no such socket"
        : /os error 111\b|refused/i.test(text)
        ? "connection refused"
        : /timed? ?out|abort/i.test(text)
        ? `no answer within ${TIMEOUT_MS / 1000} s`
        : text.trim();
      throw new CniError(
        this.#unreachableCode,
        `Cannot reach the cilia agent at unix://${this.path}: ${why}`,
        "start the agent (bin/cilia-agent), or set agentSocket in the network configuration",
      );
    }
    const text = await res.text();
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new CniError(
        CNI_ERRORS.io,
        `Unexpected answer from the cilia agent (${res.status}): ${text.slice(0, 200)}`,
      );
    }
    if (!res.ok) {
      const e = (value as { error?: { code?: string; message?: string; hint?: string } }).error;
      throw new CniError(
        cniCodeOf(e?.code ?? ""),
        e?.message ?? `The cilia agent answered ${res.status}`,
        e?.hint,
      );
    }
    return value as T;
  }

  close(): void {
    this.#client.close();
  }
}
