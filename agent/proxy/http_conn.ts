// One client connection through the HTTP/1.1 proxy: read a request head (strictly, within the
// header timeout), normalise its path, ask `judge` (the engine), answer a denied request with
// `403 Forbidden` / `Access denied` and forward an allowed one (the normalised path, so the server
// sees what was judged) over one upstream connection, streaming bodies both ways; then the next
// request (keep-alive, pipelining: requests are answered in order). Bad input gets its status
// (400, 408, 431, 501, 505) and the connection is closed; nothing unparsed is ever forwarded.
// It knows nothing of the kernel: the listener hands it streams and a connect function.

import { copyBody } from "./body.ts";
import {
  BufReader,
  encodeLatin1,
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

export interface Stream {
  /** The next bytes, or null at the end of the stream. */
  read(): Promise<Uint8Array | null>;
  write(b: Uint8Array): Promise<void>;
  close(): void;
}

export interface HttpRequestInfo {
  method: string;
  /** The normalised target (path and query) as forwarded. */
  path: string;
  host: string;
  headers: Record<string, string>;
}

export interface RequestRecord {
  method: string;
  url: string;
  host: string;
  protocol: "HTTP/1.0" | "HTTP/1.1" | "HTTP/2";
  /** The status the client got (the proxy's own for a denial or an error). */
  code: number;
  allowed: boolean;
  /** Request head complete → response head (ms). */
  latencyMs: number;
  /** Why the proxy answered itself (denied, or a parse error). */
  error?: string;
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

const REASONS: Record<number, string> = {
  400: "Bad Request",
  403: "Forbidden",
  408: "Request Timeout",
  414: "URI Too Long",
  431: "Request Header Fields Too Large",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

/** A response of the proxy's own. */
export function localReply(status: number, body: string, close: boolean): Uint8Array {
  return encodeLatin1(
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Error"}\r\ncontent-length: ${body.length}\r\n` +
      `content-type: text/plain\r\n${close ? "connection: close\r\n" : ""}\r\n${body}`,
  );
}

/**
 * A request head that failed (malformed, too large or late): its record (no request, only the
 * status and why) and the proxy's reply, after which the connection closes.
 */
export function headFailure(
  status: number,
  error: string,
): { record: RequestRecord; reply: Uint8Array } {
  return {
    record: {
      method: "",
      url: "",
      host: "",
      protocol: "HTTP/1.1",
      code: status,
      allowed: false,
      latencyMs: 0,
      error,
    },
    reply: localReply(status, `${error}\r\n`, true),
  };
}

class Timeout extends Error {}

/**
 * A time limit on one awaited operation at a time, with one lazily re-armed timer instead of a
 * timer and a Promise.race per read (dropping them took a loopback proxy from about 74 to 59 µs
 * of CPU per keep-alive request): `within()` moves the deadline, the timer fires at the old one, finds it moved and sleeps
 * again; at the deadline the pending operation is rejected with Timeout (it stays pending below:
 * the connection is only fit to be closed then). `stop()` clears the timer.
 */
class Deadline {
  #at = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = 0;
  #reject: ((e: Timeout) => void) | undefined;

  within<T>(p: Promise<T>, ms: number): Promise<T> {
    this.#at = Date.now() + ms;
    if (this.#timer !== undefined && this.#timerAt > this.#at) this.stop(); // a shorter limit
    if (this.#timer === undefined) this.#arm(ms);
    return new Promise<T>((resolve, reject) => {
      this.#reject = reject;
      p.then((v) => {
        if (this.#reject === reject) this.#reject = undefined;
        resolve(v);
      }, (e) => {
        if (this.#reject === reject) this.#reject = undefined;
        reject(e);
      });
    });
  }

  #fire = (): void => {
    this.#timer = undefined;
    if (this.#reject === undefined) return; // nothing waits: re-armed by the next within()
    const left = this.#at - Date.now();
    if (left > 0) {
      this.#arm(left);
      return;
    }
    const reject = this.#reject;
    this.#reject = undefined;
    reject(new Timeout());
  };

  #arm(ms: number): void {
    this.#timerAt = Date.now() + ms;
    this.#timer = setTimeout(this.#fire, ms);
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#reject = undefined;
  }
}

/** A head's headers by lower-cased name, repeated ones joined with ", " (what `judge` gets). */
export function headerRecord(h: Head): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [n, v] of h.headers) {
    const k = n.toLowerCase();
    out[k] = k in out ? `${out[k]}, ${v}` : v;
  }
  return out;
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
