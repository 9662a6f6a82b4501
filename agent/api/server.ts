/**
 * Serves the API app on a unix socket, mode 0600 (root only): creates the socket's directory,
 * refuses to start when another agent answers on the socket, removes a stale one, and removes
 * the socket again on close. Each request is handled by the app, which never throws.
 */

import type { Hono } from "hono";
import type { Logger } from "../log.ts";

export interface ApiServer {
  readonly path: string;
  close(): Promise<void>;
}

async function inUse(path: string): Promise<boolean> {
  try {
    const conn = await Deno.connect({ transport: "unix", path });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

export async function serveApi(app: Hono, path: string, log: Logger): Promise<ApiServer> {
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  await Deno.mkdir(dir, { recursive: true, mode: 0o755 });
  try {
    const st = await Deno.lstat(path);
    if (!st.isSocket) {
      throw new Error(`Cannot serve the API on "${path}": the path exists and is not a socket`);
    }
    if (await inUse(path)) {
      throw new Error(
        `Cannot serve the API on "${path}": another agent is listening there; stop it first`,
      );
    }
    await Deno.remove(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  // The socket is created 0600 (umask 0177 while it is bound): no window in which another user
  // could connect. The chmod after it only makes sure.
  const umask = Deno.umask(0o177);
  let server: Deno.HttpServer;
  try {
    server = Deno.serve({ path, onListen() {} }, (req) => app.fetch(req));
  } finally {
    Deno.umask(umask);
  }
  await Deno.chmod(path, 0o600);
  log.info("serving the API", { socket: `unix://${path}` });
  let closed: Promise<void> | undefined;
  return {
    path,
    close: () =>
      closed ??= (async () => {
        await server.shutdown();
        await Deno.remove(path).catch(() => {});
      })(),
  };
}
