// The CNI plugin's way to the agent, in process and without root: the HTTP/1.1 client on a unix
// socket (plain, chunked and cut answers, a timeout), AgentConnection's mapping of API errors and
// unreachable sockets to CNI codes, Server-Timing, and the rule that keeps the plugin's start
// cheap: its module graph holds no npm package and no module outside agent/cni/.
import assert from "node:assert/strict";
import { dechunk, parseAnswer, request } from "../../agent/cni/_http.ts";
import { AgentConnection, parseServerTiming } from "../../agent/cni/client.ts";
import { CniError } from "../../agent/cni/config.ts";
import { CNI_ERRORS } from "../../agent/cni/protocol.ts";

const enc = new TextEncoder();
const text = (b: Uint8Array) => new TextDecoder().decode(b);

/** A throw-away server on a unix socket in a temp dir. */
async function serve(handler: (req: Request) => Response | Promise<Response>) {
  const dir = await Deno.makeTempDir({ prefix: "cilia-cni-client-" });
  const path = `${dir}/agent.sock`;
  const server = Deno.serve({ path, transport: "unix", onListen() {} }, handler);
  return {
    path,
    dir,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("parseAnswer() and dechunk(): lengths, chunks and cut answers", () => {
  const plain = parseAnswer(
    enc.encode("HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi!"),
  );
  assert.deepEqual([plain.status, text(plain.body), plain.headers.get("x-a")], [201, "hi", "b"]);
  const chunked = parseAnswer(
    enc.encode(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
    ),
  );
  assert.equal(text(chunked.body), "abcde");
  assert.throws(() => dechunk(enc.encode("5\r\nab")), /cut short/);
  assert.throws(() => dechunk(enc.encode("zz\r\n")), /bad chunk size/);
  assert.throws(
    () => parseAnswer(enc.encode("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab")),
    /cut/,
  );
  assert.throws(() => parseAnswer(enc.encode("SSH-2.0\r\n\r\n")), /status line "SSH-2.0"/);
  assert.deepEqual(parseServerTiming("agent;dur=12.5, db;desc=x, bad;dur=z"), { agent: 12.5 });
});

Deno.test("request(): a JSON answer, a streamed (chunked) answer, and a timeout", async () => {
  await using s = await serve(async (req) => {
    const url = new URL(req.url);
    if (url.pathname === "/slow") {
      // Answers only once the client gave up and closed (shutdown() waits for every request).
      return await new Promise<Response>((resolve) =>
        req.signal.addEventListener("abort", () => resolve(new Response(null)))
      );
    }
    if (url.pathname === "/stream") {
      const body = new ReadableStream({
        start(c) {
          c.enqueue(enc.encode('{"a":'));
          c.enqueue(enc.encode("1}"));
          c.close();
        },
      });
      return new Response(body);
    }
    return Response.json({ method: req.method, body: await req.text() });
  });
  const echo = await request(s.path, { method: "POST", target: "/x", body: "{}", timeoutMs: 5000 });
  assert.deepEqual(JSON.parse(text(echo.body)), { method: "POST", body: "{}" });
  const streamed = await request(s.path, { method: "GET", target: "/stream", timeoutMs: 5000 });
  assert.equal(streamed.headers.get("transfer-encoding"), "chunked");
  assert.deepEqual(JSON.parse(text(streamed.body)), { a: 1 });
  await assert.rejects(
    request(s.path, { method: "GET", target: "/slow", timeoutMs: 50 }),
    (e: unknown) => e instanceof DOMException && e.name === "TimeoutError",
  );
});

Deno.test("AgentConnection: API errors become CNI codes; timing carries Server-Timing", async () => {
  await using s = await serve((req) => {
    const path = new URL(req.url).pathname;
    const error = (status: number, code: string) =>
      Response.json({ error: { code, message: `m-${code}`, hint: "h" } }, { status });
    if (path === "/ok") {
      return Response.json({ ok: 1 }, { headers: { "server-timing": "agent;dur=3.5" } });
    }
    if (path === "/conflict") return error(409, "cni_conflict");
    if (path === "/invalid") return error(400, "invalid_request");
    if (path === "/busy") return error(503, "kvstore_unavailable");
    return new Response("not json");
  });
  const timings: unknown[] = [];
  const c = new AgentConnection(s.path, { onTiming: (t) => timings.push(t) });
  assert.deepEqual(await c.get("/ok"), { ok: 1 });
  const t = timings[0] as { path: string; sentAt: number; answeredAt: number; server: object };
  assert.equal(t.path, "/ok");
  assert.ok(t.answeredAt >= t.sentAt);
  assert.deepEqual(t.server, { agent: 3.5 });
  const codeOf = async (path: string) => {
    const e = await c.post(path, {}).then(() => undefined, (e: unknown) => e);
    assert.ok(e instanceof CniError, `${path}: ${e}`);
    return [e.code, e.message, e.details];
  };
  assert.deepEqual(await codeOf("/conflict"), [CNI_ERRORS.agent, "m-cni_conflict", "h"]);
  assert.deepEqual(await codeOf("/invalid"), [CNI_ERRORS.invalidConfig, "m-invalid_request", "h"]);
  assert.deepEqual(await codeOf("/busy"), [CNI_ERRORS.tryAgainLater, "m-kvstore_unavailable", "h"]);
  const [code, msg] = await codeOf("/text");
  assert.equal(code, CNI_ERRORS.io);
  assert.match(String(msg), /Unexpected answer from the cilia agent \(200\): not json/);
  c.close();
});

Deno.test("AgentConnection: a missing or dead socket is 'try again later', naming it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-cni-client-" });
  try {
    const missing = new AgentConnection(`${dir}/none.sock`);
    await assert.rejects(
      missing.get("/v1/healthz"),
      (e: unknown) =>
        e instanceof CniError && e.code === CNI_ERRORS.tryAgainLater &&
        e.message === `Cannot reach the cilia agent at unix://${dir}/none.sock: no such socket`,
    );
    await Deno.writeTextFile(`${dir}/dead.sock`, ""); // connect(2) to a non-socket: refused
    const dead = new AgentConnection(`${dir}/dead.sock`, { unreachableCode: 50 });
    await assert.rejects(
      dead.get("/v1/healthz"),
      (e: unknown) =>
        e instanceof CniError && e.code === 50 && /: connection refused$/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cilia-cni's module graph: agent/cni/ only, no npm package (its start stays cheap)", async () => {
  const main = new URL("../../agent/cni/main.ts", import.meta.url);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "--no-config", main.pathname],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, text(out.stderr));
  const graph = JSON.parse(text(out.stdout)) as { modules: { specifier: string }[] };
  const dir = new URL("./", main).href;
  const outside = graph.modules.map((m) => m.specifier).filter((s) => !s.startsWith(dir));
  assert.deepEqual(outside, [], "bin/cilia-cni runs with --no-config: only agent/cni/ modules");
  assert.ok(graph.modules.length >= 5, "the graph was read");
});
