// The unix socket the HTTP Worker relays h2c connections to (`proxy-h2c.sock` beside the ports
// file, only root may reach it): each relayed connection opens with a line of JSON saying what the
// kernel said about it (original destination, client), then the client's bytes from its HTTP/2
// preface on. This module accepts and reads that much; serving the connection is the caller's.

import type { Logger } from "../log.ts";
import type { OrigDestination } from "../datapath/proxy_maps.ts";
import { prefaceState } from "./h2.ts";

/** Serves a relayed connection, its preface (and any bytes after it) read already. */
export type ServeRelayed = (
  conn: Deno.Conn,
  o: OrigDestination,
  client: { ip: string; port: number },
  first: Uint8Array,
) => Promise<void>;

export interface H2cRelay {
  listener: Deno.Listener;
  path: string;
  /** The temporary folder made for the socket (no ports file), removed with it. */
  tempDir?: string;
}

/**
 * Listens on the relay socket (in the ports file's folder, else a new temporary one) and serves
 * what comes; undefined (logged) when it cannot listen: the Worker then closes h2c connections.
 */
export function openH2cRelay(
  portsFile: string | undefined,
  log: Logger,
  serve: ServeRelayed,
): H2cRelay | undefined {
  const tempDir = portsFile ? undefined : Deno.makeTempDirSync({ prefix: "cilia-l7-" });
  const dir = portsFile
    ? portsFile.slice(0, portsFile.lastIndexOf("/") + 1) || "./"
    : `${tempDir}/`;
  const path = `${dir}proxy-h2c.sock`;
  try {
    Deno.removeSync(path);
  } catch { /* none */ }
  let listener: Deno.Listener;
  try {
    listener = Deno.listen({ transport: "unix", path });
    Deno.chmodSync(path, 0o600);
  } catch (err) {
    log.warn("L7 proxy: no h2c relay for the HTTP Worker (h2c is closed)", {
      path,
      error: err,
    });
    try {
      if (tempDir) Deno.removeSync(tempDir, { recursive: true });
    } catch { /* gone */ }
    return undefined;
  }
  (async () => {
    try {
      for await (const conn of listener) relayed(conn, serve).catch(() => {});
    } catch { /* closed */ }
  })();
  return { listener, path, ...(tempDir ? { tempDir } : {}) };
}

/** Stops listening and removes the socket (and the temporary folder made for it). */
export function closeH2cRelay(relay: H2cRelay): void {
  try {
    relay.listener.close();
    Deno.removeSync(relay.path);
  } catch { /* gone */ }
  if (relay.tempDir) {
    try {
      Deno.removeSync(relay.tempDir, { recursive: true });
    } catch { /* gone */ }
  }
}

/** An h2c connection the Worker relays: a line with what the kernel said, then its bytes. */
async function relayed(conn: Deno.Conn, serve: ServeRelayed): Promise<void> {
  let got = new Uint8Array(0), nl = -1;
  const buf = new Uint8Array(16384);
  while (nl < 0 || prefaceState(got.subarray(nl + 1)) !== "complete") {
    const n = await conn.read(buf).catch(() => null);
    if (n === null || got.length > 65536) return conn.close();
    const next = new Uint8Array(got.length + n);
    next.set(got);
    next.set(buf.subarray(0, n), got.length);
    got = next;
    nl = got.indexOf(10);
  }
  let ctx: { o: OrigDestination; client: { ip: string; port: number } };
  try {
    ctx = JSON.parse(new TextDecoder().decode(got.subarray(0, nl)));
  } catch {
    return conn.close();
  }
  return serve(conn, ctx.o, ctx.client, got.subarray(nl + 1));
}
