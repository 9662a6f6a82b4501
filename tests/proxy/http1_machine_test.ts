// The synchronous HTTP/1.1 machine (http1_machine.ts) against the async connection code it must
// match (serveHttpConnection): the same client bytes and the same scripted server through both,
// compared on what reached the server, what the client got, the verdict calls and the records.
// Every case runs in one read and in seeded random splits of both directions' bytes; the machine's
// own answers must also not depend on the splits, nor on a verdict that comes after the call that
// asked for it (the HTTP Worker asks the main thread on a cache miss).
import assert from "node:assert/strict";
import { Http1Machine } from "../../agent/proxy/http1_machine.ts";
import { ByteInput, HeadReader } from "../../agent/proxy/http1_sync.ts";
import { HttpError } from "../../agent/proxy/http1.ts";
import { serveHttpConnection, type Stream } from "../../agent/proxy/http_conn.ts";
import type { HttpRequestInfo, RequestRecord } from "../../agent/proxy/http_records.ts";
import { isNormalPath, normalisePath } from "../../agent/proxy/path.ts";
import { type Case, CASES, type Reply } from "./_http1_cases.ts";
import { prng as rng } from "../helpers/prng.ts";

interface Outcome {
  client: string;
  upstream: string[];
  judged: HttpRequestInfo[];
  records: Omit<RequestRecord, "latencyMs">[];
}

const bytes = (s: string) => {
  const b = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
  return b;
};
// (windows-1252 for 0x80–0x9f, the same on both sides of every comparison)
const latin1 = new TextDecoder("latin1");
const text = (b: Uint8Array) => latin1.decode(b);
const judge = (r: HttpRequestInfo) =>
  ((r.method === "GET" || r.method === "HEAD") && r.path.startsWith("/public")) ||
  (r.method === "POST" && r.path === "/upload") || r.method === "OPTIONS";

/** `s` cut into pieces: one piece, or random sizes from `rand` (1 byte to a quarter of it). */
type Splitter = (s: string) => string[];
const whole: Splitter = (s) => (s.length ? [s] : []);
function randomSplits(rand: () => number): Splitter {
  return (s) => {
    const out: string[] = [];
    for (let at = 0; at < s.length;) {
      const n = 1 + Math.floor(rand() * Math.max(1, s.length / 4));
      out.push(s.slice(at, at + n));
      at += n;
    }
    return out;
  };
}

/**
 * How far the server has read: whole request heads and whole requests (bodies by Content-Length
 * or the proxy's canonical chunks) in what one upstream connection received.
 */
function progress(s: string): { heads: number; done: number } {
  let at = 0, heads = 0, done = 0;
  for (;;) {
    const e = s.indexOf("\r\n\r\n", at);
    if (e < 0) return { heads, done };
    heads++;
    const head = s.slice(at, e);
    let p = e + 4;
    if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
      for (;;) {
        const le = s.indexOf("\r\n", p);
        if (le < 0) return { heads, done };
        const n = parseInt(s.slice(p, le), 16);
        const next = n === 0 ? le + 4 : le + 2 + n + 2;
        if (s.length < next) return { heads, done };
        p = next;
        if (n === 0) break;
      }
    } else {
      const cl = /\r\ncontent-length: *(\d+)/i.exec(head);
      if (cl) p += Number(cl[1]);
      if (s.length < p) return { heads, done };
    }
    done++;
    at = p;
  }
}

/** The scripted server: replies in order across its connections, once a request (head) came. */
class Server {
  #next = 0;
  conns: { got: string; heads: number; done: number; closed: boolean; out: string[] }[] = [];
  constructor(readonly replies: Reply[], readonly split: Splitter) {}

  accept(): number {
    this.conns.push({ got: "", heads: 0, done: 0, closed: false, out: [] });
    return this.conns.length - 1;
  }

  /** Bytes for connection i; returns the pieces it now answers with (null: it closes). */
  receive(i: number, b: string): (string | null)[] {
    const c = this.conns[i]!;
    if (c.closed) return [];
    c.got += b;
    const p = progress(c.got), out: (string | null)[] = [];
    for (; c.heads < p.heads; c.heads++) {
      const interim = this.replies[this.#next]?.interim;
      if (interim !== undefined && c.heads >= c.done) out.push(...this.split(interim));
    }
    for (; c.done < p.done && !c.closed; c.done++) {
      const r = this.replies[this.#next++];
      if (!r) continue;
      out.push(...this.split(r.final));
      if (r.close) out.push(null), c.closed = true;
    }
    return out;
  }
}

const strip = (r: RequestRecord) => {
  const { latencyMs: _, ...rest } = r;
  // A timeout's record: the async path's error says nothing, the machine's which deadline.
  if (/timeout$/.test(rest.error ?? "") || rest.error === "") delete rest.error;
  return rest;
};

const ASYNC_TIMEOUT_MS = 60;

async function viaAsync(c: Case, split: Splitter): Promise<Outcome> {
  const server = new Server(c.replies, split);
  const o: Outcome = { client: "", upstream: [], judged: [], records: [] };
  const input = split(c.input);
  let hang: (() => void) | undefined;
  const client: Stream = {
    read: () => {
      const next = input.shift();
      if (next !== undefined) return Promise.resolve(bytes(next));
      return c.hang ? new Promise((r) => hang = () => r(null)) : Promise.resolve(null);
    },
    write: (b) => (o.client += text(b), Promise.resolve()),
    close: () => hang?.(),
  };
  const connect = (): Promise<Stream> => {
    if (c.refuse) return Promise.reject(new Error("connection refused"));
    const i = server.accept();
    o.upstream.push("");
    const queue: (string | null)[] = [];
    let wake: (() => void) | undefined, closed = false;
    return Promise.resolve({
      read: async () => {
        while (queue.length === 0 && !closed) await new Promise<void>((r) => wake = r);
        const b = closed ? null : queue.shift()!;
        if (b === null) closed = true;
        return b === null ? null : bytes(b);
      },
      write: (b) => {
        if (closed) return Promise.resolve();
        o.upstream[i] += text(b);
        queue.push(...server.receive(i, text(b)));
        wake?.();
        return Promise.resolve();
      },
      close: () => {
        closed = true;
        wake?.();
      },
    });
  };
  await serveHttpConnection(client, {
    connect,
    judge: (r) => (o.judged.push(r), judge(r)),
    onRequest: (r) => o.records.push(strip(r)),
    headerTimeoutMs: ASYNC_TIMEOUT_MS,
    idleTimeoutMs: ASYNC_TIMEOUT_MS,
  });
  return o;
}

/** `defer`: every verdict comes later, after the call that asked (the HTTP Worker's misses). */
function viaMachine(c: Case, split: Splitter, defer = false): Outcome {
  const server = new Server(c.replies, split);
  const o: Outcome = { client: "", upstream: [], judged: [], records: [] };
  let now = 1000, up = -1, closed = false;
  let asked: HttpRequestInfo | undefined;
  const pending: (string | null)[] = [];
  const m = new Http1Machine({
    toClient: (b) => o.client += text(b),
    toUpstream: (b) => {
      if (up < 0) return;
      o.upstream[up] += text(b);
      pending.push(...server.receive(up, text(b)));
    },
    connect: () => {
      if (c.refuse) return "connection refused";
      up = server.accept();
      o.upstream.push("");
      pending.length = 0;
      return undefined;
    },
    closeUpstream: () => (up = -1, pending.length = 0),
    closeClient: () => closed = true,
  }, {
    judge: (r) => {
      o.judged.push({ ...r, headers: r.headers }); // (a copy: headers are read on demand)
      return defer ? (asked = r, undefined) : judge(r);
    },
    onRequest: (r) => o.records.push(strip(r)),
    headerTimeoutMs: ASYNC_TIMEOUT_MS,
    idleTimeoutMs: ASYNC_TIMEOUT_MS,
    now,
  });
  // The server's answers (and deferred verdicts) go in one by one after the call that caused
  // them (never re-entrantly).
  const pump = () => {
    for (;;) {
      if (asked && m.judging) {
        const r = asked;
        asked = undefined;
        m.verdict(judge(r), now);
        continue;
      }
      const b = pending.shift();
      if (b === undefined || closed) return;
      if (b === null) m.upstreamEnd(now);
      else m.upstream(bytes(b), now);
    }
  };
  for (const piece of split(c.input)) {
    if (closed) break;
    m.client(bytes(piece), ++now);
    pump();
  }
  if (!c.hang && !closed) m.clientEnd(++now), pump();
  for (let i = 0; i < 10 && !m.closed && m.deadline < Infinity; i++) {
    m.tick(now = m.deadline), pump();
  }
  assert.ok(m.closed || !c.hang, "the machine is left waiting with no deadline");
  return o;
}

/** Cases whose error text depends on where reads end compare statuses, not messages. */
function loose(o: Outcome): unknown {
  return {
    ...o,
    client: [...o.client.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]),
    records: o.records.map(({ error: _, ...r }) => r),
  };
}

async function compare(c: Case, seed: number | undefined): Promise<void> {
  const split = seed === undefined ? whole : randomSplits(rng(seed));
  const a = await viaAsync(c, split);
  for (const defer of [false, true]) {
    const m = viaMachine(c, seed === undefined ? whole : randomSplits(rng(seed)), defer);
    const where = `${c.name}${seed === undefined ? "" : ` (seed ${seed})`}${
      defer ? " deferred" : ""
    }`;
    if (seed !== undefined && c.looseWhenSplit) assert.deepEqual(loose(m), loose(a), where);
    else if (seed !== undefined && c.reserialised) {
      assert.deepEqual({ ...m, upstream: [] }, { ...a, upstream: [] }, where);
    } else assert.deepEqual(m, a, where);
    if (c.expect) c.expect(m);
  }
}

Deno.test("Http1Machine matches serveHttpConnection on every case, whole and split", async (t) => {
  const seen = new Set<number>();
  for (const c of CASES) {
    await t.step(c.name, async () => {
      await compare(c, undefined);
      const runs = c.hang ? 2 : 12;
      for (let i = 0; i < runs; i++) await compare(c, 7919 * (i + 1) + c.name.length);
      const m = viaMachine(c, whole);
      for (const r of m.records) seen.add(r.code);
    });
  }
  // The cases must reach every kind of answer (a guard against a corpus that stops exercising).
  for (const code of [200, 204, 304, 400, 403, 408, 431, 501, 502, 503, 505]) {
    assert.ok(seen.has(code), `no case ends in ${code}`);
  }
});

Deno.test("Http1Machine keeps no bytes of the caller's reused read buffer", () => {
  // The caller reads every chunk into one buffer and overwrites it after each call.
  const c = CASES.find((x) => x.name === "pipelined: allowed, denied, allowed then close")!;
  const reused = new Uint8Array(4096);
  const o = { client: "", upstream: "" };
  const server = new Server(c.replies, whole);
  let up = -1;
  const pending: string[] = [];
  const m = new Http1Machine({
    toClient: (b) => o.client += text(b),
    toUpstream: (
      b,
    ) => (o.upstream += text(b), pending.push(...server.receive(up, text(b)) as string[])),
    connect: () => (up = server.accept(), undefined),
    closeUpstream: () => {},
    closeClient: () => {},
  }, { judge, onRequest: () => {}, now: 0 });
  const feed = (s: string, to: "client" | "upstream") => {
    reused.set(bytes(s));
    const view = reused.subarray(0, s.length);
    if (to === "client") m.client(view, 1);
    else m.upstream(view, 1);
    reused.fill(0x58); // "X": anything kept by reference would now be garbage
  };
  for (let i = 0; i < c.input.length; i += 5) {
    feed(c.input.slice(i, i + 5), "client");
    for (let b = pending.shift(); b !== undefined; b = pending.shift()) {
      for (let j = 0; j < b.length; j += 3) feed(b.slice(j, j + 3), "upstream");
    }
  }
  assert.deepEqual(o.client.match(/HTTP\/1\.1 \d{3}/g), [
    "HTTP/1.1 200",
    "HTTP/1.1 403",
    "HTTP/1.1 200",
  ]);
  assert.ok(!o.upstream.includes("X") && !o.client.includes("XX"), o.upstream);
  assert.ok(m.closed);
});

Deno.test("isNormalPath() is true only for targets normalisePath() returns unchanged", () => {
  const rand = rng(42);
  const alphabet = ["/", "/", "a", "b", ".", "%", "2", "e", "F", "?", "=", "~", " ", "#", "//"];
  let plain = 0;
  for (let i = 0; i < 20000; i++) {
    let t = "/";
    for (let n = Math.floor(rand() * 10); n > 0; n--) t += alphabet[Math.floor(rand() * 15)];
    if (!isNormalPath(t)) continue;
    plain++;
    assert.equal(normalisePath(t), t, t);
  }
  assert.ok(plain > 1000, `only ${plain} plain targets drawn`);
  for (const t of ["/public", "/", "/a/b?c=d/../e", "/a.b/c.", "/~x"]) {
    assert.ok(isNormalPath(t), t);
  }
  for (const t of ["/a/../b", "/a/./b", "//a", "/a%2Fb", "/.x", "*", "/a b", "/a#b", "x"]) {
    assert.ok(!isNormalPath(t), t);
  }
});

Deno.test("HeadReader checks the next head from its first byte after a head read whole", () => {
  const inp = new ByteInput(), r = new HeadReader();
  const kind = { request: true, max: 16384, maxHeaders: 100 };
  // The first head's start, without an LF, scanned on the line path; then it completes whole.
  inp.push(bytes("GET /public"));
  assert.equal(r.read(inp, kind), undefined);
  inp.keep();
  inp.push(bytes(" HTTP/1.1\r\nHost: s\r\n\r\nGET /a\nb"));
  const head = r.read(inp, kind)!;
  assert.equal(head.target, "/public");
  inp.take(head.size);
  assert.throws(
    () => r.read(inp, kind),
    (e) => e instanceof HttpError && e.message === "Bare LF in request line",
  );
});
