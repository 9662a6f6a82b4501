// One client connection through the HTTP/1.1 proxy: read a request head (strictly, within the
// header timeout), normalise its path, ask `judge` (the engine), answer a denied request with
// `403 Forbidden` / `Access denied` and forward an allowed one (the normalised path, so the server
// sees what was judged) over one upstream connection, streaming bodies both ways; then the next
// request (keep-alive, pipelining: requests are answered in order). Bad input gets its status
// (400, 408, 431, 501, 505) and the connection is closed; nothing unparsed is ever forwarded.
// It knows nothing of the kernel: the listener hands it streams and a connect function. The
// request and record types and the proxy's own answers are http_records.ts's (shared with the
// Worker's machine), the deadlines _deadline.ts's.

import { copyBody } from "./body.ts";
import {
  BufReader,
  first,
  type Framing,
  type Head,
  HttpError,
  keepAlive,
  readRequestHead,
  readResponseHead,
  requestFraming,
  responseFraming,
  serializeHead,
} from "./http1.ts";
import { normalisePath, PathError } from "./path.ts";
import { Deadline, Timeout } from "./_deadline.ts";
import {
  headerRecord,
  headFailure,
  type HttpRequestInfo,
  localReply,
  type RequestRecord,
} from "./http_records.ts";

export interface Stream {
  /** The next bytes, or null at the end of the stream. */
  read(): Promise<Uint8Array | null>;
  write(b: Uint8Array): Promise<void>;
  close(): void;
}

export interface ConnOptions {
  connect(): Promise<Stream>;
  judge(req: HttpRequestInfo): boolean;
  onRequest(rec: RequestRecord): void;
  /** A whole request head must arrive within this (default 10 s)… */
  headerTimeoutMs?: number;
  /** …and a keep-alive connection may wait this long for the next one (default 60 s). */
  idleTimeoutMs?: number;
  maxHeadBytes?: number;
}

/** Serves one client connection until it closes, errs or times out; never throws. */
export async function serveHttpConnection(client: Stream, o: ConnOptions): Promise<void> {
  // Every read, of a head or a body, must bring bytes within the idle timeout.
  const idle = o.idleTimeoutMs ?? 60_000;
  const clientReads = new Deadline(), heads = new Deadline();
  const cr = new BufReader(() => clientReads.within(client.read(), idle));
  let up: { s: Stream; r: BufReader; reads: Deadline } | undefined;
  const closeUp = () => {
    up?.s.close();
    up?.reads.stop();
    up = undefined;
  };
  let firstRequest = true;
  try {
    for (;;) {
      const wait = firstRequest ? o.headerTimeoutMs ?? 10_000 : o.idleTimeoutMs ?? 60_000;
      firstRequest = false;
      let head: Head | null;
      try {
        head = await heads.within(
          readRequestHead(cr, { maxHeadBytes: o.maxHeadBytes ?? 16384 }),
          wait,
        );
      } catch (err) {
        if (err instanceof Timeout && cr.buffered === 0) return; // sent nothing: just close
        const status = err instanceof Timeout ? 408 : err instanceof HttpError ? err.status : 400;
        const msg = err instanceof Timeout ? "Request header timeout" : (err as Error).message;
        const failed = headFailure(status, msg);
        o.onRequest(failed.record);
        await client.write(failed.reply).catch(() => {});
        return;
      }
      if (head === null) return;
      const again = await serveRequest(head, cr.taken(head.size));
      if (!again) return;
    }
  } catch {
    // the client or the server went away mid-message: close both
  } finally {
    closeUp();
    clientReads.stop();
    heads.stop();
    client.close();
  }

  /** One request (raw: its head as it was read, when at hand); true for another. */
  async function serveRequest(head: Head, raw: Uint8Array | undefined): Promise<boolean> {
    const started = performance.now();
    const host = first(head, "host") ?? "";
    const rec = (code: number, allowed: boolean, path: string, error?: string) =>
      o.onRequest({
        method: head.method,
        url: path,
        host,
        protocol: `HTTP/${head.version}`,
        code,
        allowed,
        latencyMs: performance.now() - started,
        ...(error !== undefined ? { error } : {}),
      });
    let framing: Framing, path: string;
    try {
      framing = requestFraming(head);
      path = head.target === "*" && head.method === "OPTIONS" ? "*" : normalisePath(head.target);
    } catch (err) {
      const status = err instanceof HttpError ? err.status : 400;
      const msg = err instanceof PathError || err instanceof HttpError ? err.message : String(err);
      rec(status, false, head.target, msg);
      await client.write(localReply(status, `${msg}\r\n`, true));
      return false;
    }
    const allowed = o.judge({ method: head.method, path, host, headers: headerRecord(head) });
    if (!allowed) {
      // Cilium's answer. A body the client may still send is not read: close after it.
      const close = framing.kind !== "none" || !keepAlive(head);
      rec(403, false, path, "Access denied");
      await client.write(localReply(403, "Access denied\r\n", close));
      return !close;
    }
    if (!up) {
      try {
        const s = await o.connect();
        const reads = new Deadline();
        up = { s, r: new BufReader(() => reads.within(s.read(), idle)), reads };
      } catch (err) {
        rec(503, true, path, `Upstream connect failed: ${(err as Error).message}`);
        await client.write(localReply(503, "Upstream connect failed\r\n", true));
        return false;
      }
    }
    const u = up;
    // The head as it came when the path needs no change (it was validated as parsed).
    await u.s.write(raw !== undefined && path === head.target ? raw : serializeHead(head, path));
    let bodyError: unknown;
    const body = copyBody(cr, framing, (b) => u.s.write(b), "request body").catch((e) => {
      bodyError = e; // a bad request body: cut the upstream leg, answer its status below
      u.s.close();
    });
    let resp: Head;
    try {
      resp = await readResponseHead(u.r);
      while (resp.status >= 100 && resp.status < 200) {
        if (resp.status === 101) throw new HttpError(502, "Protocol upgrades are not supported");
        await client.write(u.r.taken(resp.size) ?? serializeHead(resp));
        resp = await readResponseHead(u.r);
      }
    } catch (err) {
      await body;
      const e = bodyError ?? err;
      const status = e instanceof HttpError ? e.status : 502;
      const msg = e instanceof Error ? e.message : String(e);
      rec(status, bodyError === undefined, path, msg);
      const text = status === 502 ? "Bad gateway" : msg;
      await client.write(localReply(status, `${text}\r\n`, true)).catch(() => {});
      return false;
    }
    const latencyMs = performance.now() - started;
    const rf = responseFraming(resp, head.method);
    // The response head is forwarded unchanged: the bytes as they came when they are at hand.
    const rawResp = u.r.taken(resp.size);
    if (rawResp !== undefined && rf.kind === "length" && u.r.buffered >= rf.length) {
      // Head and whole body in the bytes read (the common small response): one write, no copy.
      u.r.take(rf.length);
      await client.write(u.r.taken(resp.size + rf.length)!);
    } else if (rf.kind === "length" && u.r.buffered >= rf.length) {
      const respHead = serializeHead(resp);
      const out = new Uint8Array(respHead.length + rf.length);
      out.set(respHead);
      out.set(u.r.take(rf.length), respHead.length);
      await client.write(out);
    } else {
      await client.write(rawResp ?? serializeHead(resp));
      if (rf.kind !== "none") await copyBody(u.r, rf, (b) => client.write(b), "response body");
    }
    await body;
    o.onRequest({
      method: head.method,
      url: path,
      host,
      protocol: `HTTP/${head.version}`,
      code: resp.status,
      allowed: true,
      latencyMs,
    });
    if (bodyError !== undefined) return false;
    if (!keepAlive(resp) || rf.kind === "close") closeUp();
    return keepAlive(head) && keepAlive(resp);
  }
}
