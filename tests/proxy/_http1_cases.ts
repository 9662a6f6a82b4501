// Hand-written HTTP/1.1 proxy cases for http1_machine_test.ts (the bad heads also for http1_test.ts
// and http_conn_test.ts): the client's bytes, the scripted server's replies (each sent once its
// request came whole; `interim` once its head came), and what must hold of the outcome besides the
// async and sync paths agreeing. Policy: GET and HEAD on /public*, POST /upload, OPTIONS.
import assert from "node:assert/strict";

export interface Reply {
  interim?: string;
  final: string;
  /** The server closes the connection after this reply. */
  close?: boolean;
}

export interface Case {
  name: string;
  input: string;
  replies: Reply[];
  /** The client keeps the connection open after its bytes (timeouts decide). */
  hang?: boolean;
  /** The upstream connect fails. */
  refuse?: boolean;
  /** Split runs compare statuses only (the async path's message depends on where reads end). */
  looseWhenSplit?: boolean;
  /** Split runs skip the forwarded bytes (the async path re-serialises a head over two reads). */
  reserialised?: boolean;
  expect?: (o: { client: string; upstream: string[]; records: unknown[] }) => void;
}

const ok = (body: string, extra = "") =>
  `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n${extra}\r\n${body}`;
const OK = { final: ok("hello") };
const get = (path: string, extra = "") => `GET ${path} HTTP/1.1\r\nHost: s\r\n${extra}\r\n`;
const codes = (client: string) =>
  [...client.matchAll(/HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1]));
const answers = (...want: number[]) => (o: { client: string }) =>
  assert.deepEqual(codes(o.client), want, o.client);
const forwardsNothing = (...want: number[]) => (o: { client: string; upstream: string[] }) => {
  answers(...want)(o);
  assert.deepEqual(o.upstream.join(""), "", "nothing reached the server");
};
const big = "b".repeat(200_000);

const features: Case[] = [
  { name: "one GET", input: get("/public"), replies: [OK], expect: answers(200) },
  {
    name: "pipelined: allowed, denied, allowed then close",
    input: get("/public") + get("/private") + get("/public?x=1", "Connection: close\r\n"),
    replies: [OK, { final: ok("again") }],
    expect: (o) => {
      answers(200, 403, 200)(o);
      assert.match(o.client, /Access denied/);
    },
  },
  {
    name: "path tricks are judged normalised and denied",
    input: get("/public/../private") + get("/public/%2e%2e/private") +
      get("/public%2F..%2Fprivate"),
    replies: [],
    expect: forwardsNothing(403, 403, 403),
  },
  {
    name: "an allowed path is forwarded normalised",
    input: get("//public/%7Ea?q=%7E"),
    replies: [OK],
    expect: (o) => assert.match(o.upstream[0]!, /^GET \/public\/~a\?q=%7E HTTP\/1\.1\r\n/),
  },
  {
    name: "Content-Length body",
    input: "POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 11\r\n\r\nhello world" +
      get("/public"),
    replies: [OK, OK],
    expect: answers(200, 200),
  },
  {
    name: "a large body streams through",
    input: `POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: ${big.length}\r\n\r\n${big}`,
    replies: [{ final: ok(big) }],
    expect: (o) => assert.equal(o.upstream[0]!.length > big.length, true),
  },
  {
    name: "chunked body re-framed (extensions and trailers dropped)",
    input: "POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n" +
      "5;ext=1\r\nhello\r\nA\r\n world!!!!\r\n0\r\nTrailer: x\r\n\r\n",
    replies: [OK],
    expect: (o) =>
      assert.match(o.upstream[0]!, /\r\n\r\n5\r\nhello\r\na\r\n world!!!!\r\n0\r\n\r\n$/),
  },
  {
    name: "Expect: 100-continue, allowed",
    input:
      "POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
    replies: [{ interim: "HTTP/1.1 100 Continue\r\n\r\n", final: ok("got 3") }],
    expect: answers(100, 200),
  },
  {
    name: "Expect: 100-continue, denied: 403 and close, no 100",
    input:
      "POST /other HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
    replies: [],
    expect: forwardsNothing(403),
  },
  {
    name: "two interim responses",
    input: get("/public"),
    replies: [{
      interim: "HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
      final: ok("x"),
    }],
    expect: answers(102, 103, 200),
  },
  {
    name: "chunked response re-encoded",
    input: get("/public") + get("/public"),
    replies: [
      { final: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n" },
      OK,
    ],
    expect: (o) => assert.match(o.client, /\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP\/1\.1 200/),
  },
  {
    name: "response until close, then a new upstream leg",
    input: get("/public") + get("/public"),
    replies: [{ final: "HTTP/1.1 200 OK\r\n\r\nall of it", close: true }, OK],
    expect: (o) => {
      answers(200, 200)(o);
      assert.equal(o.upstream.length, 2);
    },
  },
  {
    name: "HEAD, 204 and 304 have no body",
    input: `HEAD /public HTTP/1.1\r\nHost: s\r\n\r\n` + get("/public/a") + get("/public/b"),
    replies: [
      { final: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" },
      { final: "HTTP/1.1 204 No Content\r\n\r\n" },
      { final: "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n" },
    ],
    expect: answers(200, 204, 304),
  },
  {
    name: "HTTP/1.0 without keep-alive closes",
    input: "GET /public HTTP/1.0\r\n\r\n" + get("/public"),
    replies: [OK, OK],
    expect: answers(200),
  },
  {
    name: "HTTP/1.0 keep-alive stays",
    input: "GET /public HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + get("/public"),
    replies: [{ final: ok("x", "Connection: keep-alive\r\n") }, OK],
    expect: answers(200, 200),
  },
  {
    // (The machine reuses what the same head bytes gave the last time: each is still judged,
    // forwarded or denied, and recorded, and each body still read.)
    name: "heads repeated byte for byte on one connection",
    input: get("/public").repeat(3) + get("/private").repeat(2) +
      "POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhello".repeat(2) +
      get("/public"),
    replies: [OK, OK, OK, OK, OK, { final: ok("last") }],
    expect: (o) => {
      answers(200, 200, 200, 403, 403, 200, 200, 200)(o);
      assert.equal(o.records.length, 8);
      assert.equal(o.upstream.join("").split("hello").length - 1, 2, "both bodies forwarded");
    },
  },
  {
    name: "the server says close",
    input: get("/public") + get("/public"),
    replies: [{ final: ok("x", "Connection: close\r\n"), close: true }, OK],
    expect: answers(200),
  },
  { name: "OPTIONS *", input: "OPTIONS * HTTP/1.1\r\nHost: s\r\n\r\n", replies: [OK] },
  {
    name: "denied POST with a body: 403 and close",
    input: "POST /other HTTP/1.1\r\nHost: s\r\nContent-Length: 2\r\n\r\nhi" + get("/public"),
    replies: [OK],
    expect: forwardsNothing(403),
  },
  {
    name: "optional whitespace is kept as sent",
    input: "GET /public HTTP/1.1\r\nHost:s\r\nX-A:  v \r\n\r\n",
    replies: [OK],
    reserialised: true,
  },
  {
    name: "upstream connect fails: 503",
    input: get("/public"),
    replies: [],
    refuse: true,
    expect: answers(503),
  },
];

/** Replies to `GET /public` that the proxy answers with 502. */
const badReplies: [string, Reply][] = [
  ["server upgrades: 502", { final: "HTTP/1.1 101 Switching Protocols\r\n\r\n" }],
  ["server closes without a reply: 502", { final: "", close: true }],
  ["malformed status line: 502", { final: "HTTP/1.1 2OO OK\r\n\r\n" }],
  [
    "bare LF in response headers: 502",
    { final: "HTTP/1.1 200 OK\r\nA: b\nContent-Length: 0\r\n\r\n" },
  ],
];

const serverFaults: Case[] = [
  ...badReplies.map(([name, reply]): Case => ({
    name,
    input: get("/public"),
    replies: [reply],
    expect: answers(502),
  })),
  {
    name: "status line cut by close",
    input: get("/public"),
    replies: [{ final: "HTTP/1.1 20", close: true }],
  },
  {
    name: "bad Content-Length from the server: closed",
    input: get("/public"),
    replies: [{ final: "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n" }],
    expect: answers(),
  },
  {
    name: "response cut mid-body: closed",
    input: get("/public"),
    replies: [{ final: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close: true }],
    expect: (o) => assert.deepEqual(o.records, [], "no record of a response cut short"),
  },
  {
    name: "bad chunk from the server: closed",
    input: get("/public"),
    replies: [{ final: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" }],
  },
];

/**
 * Request heads the parser (readRequestHead, requestFraming) refuses, with the status answered:
 * [name, the client's bytes, status]. Also run by http1_test.ts and http_conn_test.ts.
 */
export const BAD_HEADS: [string, string, number][] = [
  [
    "CL + TE",
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    400,
  ],
  [
    "duplicate CL",
    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
    400,
  ],
  ["CL list", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n", 400],
  ["negative CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400],
  ["TE gzip", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501],
  [
    "two TE",
    "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    501,
  ],
  ["TE in HTTP/1.0", "POST /upload HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400],
  ["obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400],
  ["bare LF", "GET / HTTP/1.1\nHost: x\n\n", 400],
  ["bare LF in headers", "GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400],
  ["bare CR", "GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400],
  ["space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400],
  ["no colon", "GET / HTTP/1.1\r\nHost x\r\n\r\n", 400],
  ["NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX: a\u0000b\r\n\r\n", 400],
  ["no Host", "GET / HTTP/1.1\r\n\r\n", 400],
  ["two Hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400],
  ["not HTTP", "SSH-2.0-OpenSSH_9.2\r\n\r\n", 400],
  ["binary", "\u0016\u0003\u0001\u0002\u0000\u0001\u0000\u0001\u00fc\u0003\u0003\r\n\r\n", 400],
  ["TLS hello", "\u0016\u0003\u0001\u0000\u00a5\u0001\u0000\u0000\u00a1\u0003\u0003\r\n", 400],
  ["HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505],
  ["truncated", "GET / HTTP/1.1\r\nHost: x\r\n", 400],
  ["truncated request line", "GET / HTT", 400],
  ["latin-1 value, then a bad one", "GET / HTTP/1.1\r\nHost: x\r\nA: \u00e9\r\nB\r\n\r\n", 400],
];

/** Heads that parse but whose target the proxy refuses (path.ts), in the same form. */
export const BAD_TARGETS: [string, string, number][] = [
  ["bad percent-escape", "GET /public/%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400],
  ["target not a path", "GET http://x/public HTTP/1.1\r\nHost: x\r\n\r\n", 400],
];

const badBodies: [string, string, number][] = [
  [
    "bad chunk size",
    "POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    400,
  ],
  [
    "no CRLF after a chunk",
    "POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n",
    400,
  ],
  ["body cut by close", "POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 10\r\n\r\nabc", 400],
  [
    "chunked body cut in a trailer",
    "POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nT: x",
    400,
  ],
];

export const CASES: Case[] = [
  ...features,
  ...serverFaults,
  ...[...BAD_HEADS, ...BAD_TARGETS].map(([name, input, status]): Case => ({
    name,
    input,
    replies: [],
    expect: forwardsNothing(status),
  })),
  {
    name: "oversized header: 431",
    input: `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20000)}\r\n\r\n`,
    replies: [],
    looseWhenSplit: true,
    expect: forwardsNothing(431),
  },
  {
    name: "too many headers: 431",
    input: `GET / HTTP/1.1\r\nHost: x\r\n${"X: y\r\n".repeat(200)}\r\n`,
    replies: [],
    looseWhenSplit: true,
    expect: forwardsNothing(431),
  },
  ...badBodies.map(([name, input, status]): Case => ({
    name,
    input,
    replies: [OK],
    looseWhenSplit: true,
    expect: (o) => {
      answers(status)(o);
      assert.match(o.upstream[0]!, /^POST \/upload/, "its head went on; the leg was cut");
    },
  })),
  // Timeouts: the client stays connected.
  {
    name: "slowloris: 408",
    input: "GET /public HTTP/1.1\r\nHo",
    replies: [],
    hang: true,
    expect: answers(408),
  },
  { name: "a client that sends nothing", input: "", replies: [], hang: true, expect: answers() },
  {
    name: "keep-alive, then idle: closed",
    input: get("/public"),
    replies: [OK],
    hang: true,
    expect: answers(200),
  },
  {
    name: "a stalled request body: 502",
    input: "POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 10\r\n\r\nabc",
    replies: [OK],
    hang: true,
    expect: answers(502),
  },
  {
    name: "a server that never answers: 502",
    input: get("/public"),
    replies: [],
    hang: true,
    expect: answers(502),
  },
];
