// `cilia ui [--listen 127.0.0.1:12000]`: serves the simulator (web/dist/) and a read-only bridge to
// the agent's API at /api/v1/… (GET only: endpoints, identities, policies, flows, status), because
// a browser cannot reach the agent's unix socket. Every request needs the random access token of
// the printed URL (`?token=`, the cookie the first page load sets, or `Authorization: Bearer`),
// compared in constant time; without it: 401. It listens on loopback only unless
// `--allow-remote`. It never writes to the agent.

import { serveSimulator } from "../web/static.ts";
import { encodeBase64Url } from "@cilia/policy-wasm";
import { UsageError } from "./output.ts";
import { socketPath } from "./live_client.ts";

/** The agent API paths the bridge forwards (GET only), with their query strings. */
const BRIDGED = /^\/v1\/(endpoint|identity|policy|flows|status|node)(\/[\w.%:-]+)*$/;
const COOKIE = "cilia_ui_token";

export interface UiOptions {
  token: string;
  /** Answers a GET on the agent's API (path with query; the browser's Accept header). */
  agent: (pathAndQuery: string, init: { signal: AbortSignal; accept: string }) => Promise<Response>;
  /** The built simulator; default web/dist/. */
  root?: string | URL;
}

/** A new random access token (32 bytes, base64url). */
export function newToken(): string {
  return encodeBase64Url(crypto.getRandomValues(new Uint8Array(32)));
}

/** Equal strings, in time independent of where they differ (both hashed to equal length). */
async function sameToken(given: string, token: string): Promise<boolean> {
  const enc = new TextEncoder();
  const [a, b] = await Promise.all(
    [given, token].map((t) =>
      crypto.subtle.digest("SHA-256", enc.encode(t)).then((d) => new Uint8Array(d))
    ),
  );
  let diff = 0;
  for (let i = 0; i < a!.length; i++) diff |= a![i]! ^ b![i]!;
  return diff === 0;
}

function givenToken(req: Request, url: URL): string | undefined {
  const q = url.searchParams.get("token");
  if (q) return q;
  const auth = /^Bearer\s+(\S+)$/i.exec(req.headers.get("authorization") ?? "")?.[1];
  if (auth) return auth;
  const cookie = (req.headers.get("cookie") ?? "").split(/;\s*/).find((c) =>
    c.startsWith(`${COOKIE}=`)
  );
  return cookie?.slice(COOKIE.length + 1);
}

const plain = (status: number, text: string, headers: HeadersInit = {}) =>
  new Response(text, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  });

/** The handler of `cilia ui`: token check, the read-only bridge, the simulator's files. */
export function createUiHandler(o: UiOptions): (req: Request) => Promise<Response> {
  return async (req) => {
    const url = new URL(req.url);
    const given = givenToken(req, url);
    if (given === undefined || !(await sameToken(given, o.token))) {
      return plain(401, "Unauthorized: open the URL with the access token that cilia ui printed", {
        "www-authenticate": 'Bearer realm="cilia ui"',
      });
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      return plain(405, `Method ${req.method} not allowed: the bridge is read-only`, {
        allow: "GET, HEAD",
      });
    }
    let res: Response;
    if (url.pathname.startsWith("/api/")) {
      const path = url.pathname.slice("/api".length);
      if (!BRIDGED.test(path)) return plain(404, `Not bridged: "${url.pathname}"`);
      url.searchParams.delete("token");
      const q = url.searchParams.toString();
      try {
        res = await o.agent(path + (q ? `?${q}` : ""), {
          signal: req.signal,
          accept: req.headers.get("accept") ?? "application/json",
        });
      } catch (e) {
        return plain(502, `The agent did not answer: ${(e as Error).message}`);
      }
    } else {
      res = await serveSimulator(req, o.root !== undefined ? { root: o.root } : {});
    }
    if (url.searchParams.get("token")) {
      // The first page load carries the token in its URL; later requests carry the cookie.
      res = new Response(res.body, res);
      res.headers.append(
        "set-cookie",
        `${COOKIE}=${url.searchParams.get("token")}; Path=/; HttpOnly; SameSite=Strict`,
      );
    }
    return res;
  };
}

/** Is `host` a loopback address (127.0.0.0/8, ::1, localhost)? */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h);
}

export function parseListen(text: string): { hostname: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(text);
  const port = Number(m?.[2]);
  if (!m || port > 65535) {
    throw new UsageError(`Invalid --listen "${text}": expected HOST:PORT, e.g. 127.0.0.1:12000`);
  }
  return { hostname: m[1]!.replace(/^\[|\]$/g, ""), port };
}

export interface UiFlags {
  listen?: string | undefined;
  "allow-remote"?: boolean | undefined;
  host?: string | undefined;
  "web-dir"?: string | undefined;
}

export async function ui(v: UiFlags): Promise<number> {
  const listen = parseListen(v.listen ?? "127.0.0.1:12000");
  if (!isLoopback(listen.hostname) && !v["allow-remote"]) {
    throw new UsageError(
      `Refusing to listen on "${listen.hostname}": it is not a loopback address, and the bridge serves the cluster's flows; add --allow-remote to do it anyway`,
    );
  }
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: socketPath(v.host) } });
  const token = newToken();
  const handler = createUiHandler({
    token,
    agent: (p, { signal, accept }) =>
      fetch(`http://localhost${p}`, { client, signal, headers: { accept } } as RequestInit),
    ...(v["web-dir"] ? { root: v["web-dir"] } : {}),
  });
  const ac = new AbortController();
  Deno.addSignalListener("SIGINT", () => ac.abort());
  const server = Deno.serve({
    ...listen,
    signal: ac.signal,
    onListen: ({ hostname, port }) => {
      const host = hostname.includes(":") ? `[${hostname}]` : hostname;
      console.log(`cilia ui: http://${host}:${port}/?token=${token}`);
      console.log("Ctrl-C stops it. The token is required on every request.");
    },
  }, handler);
  await server.finished;
  client.close();
  return 0;
}
