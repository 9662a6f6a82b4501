// rawGet() (cli/_raw_http.ts, what `cilia observe -o json` reads the agent's socket with) must hand
// over exactly the body a real HTTP server sends, chunked or not, whatever the read and chunk
// boundaries, and refuse an error answer with a RawHttpError (the caller then asks through fetch).
import assert from "node:assert/strict";
import { rawGet, RawHttpError } from "../../cli/_raw_http.ts";

const LINE = (i: number) => `{"flow":{"n":${i},"pad":"${"x".repeat(i % 97)}"}}\n`;

Deno.test("rawGet() reads chunked and plain bodies and refuses error answers", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-raw-http-" });
  const path = `${dir}/s.sock`;
  const want = Array.from({ length: 5000 }, (_, i) => LINE(i)).join("");
  const bytes = new TextEncoder().encode(want);
  const server = Deno.serve({ path, transport: "unix", onListen() {} }, (req) => {
    const url = new URL(req.url);
    if (url.searchParams.has("bad")) {
      return Response.json({ error: { code: "invalid_filter" } }, { status: 400 });
    }
    if (url.searchParams.has("plain")) return new Response(want);
    let at = 0, size = 1;
    return new Response(
      new ReadableStream({
        pull(ctl) {
          if (at >= bytes.length) return ctl.close();
          ctl.enqueue(bytes.slice(at, at + size)); // 1, 8, 64, … byte pieces, cut anywhere
          at += size;
          size = size >= 70_000 ? 3 : size * 8;
        },
      }),
    );
  });
  const read = async (query: string) => {
    const parts: Uint8Array[] = [];
    await rawGet({ path }, `/v1/flows?${query}`, (b) => {
      parts.push(b.slice());
      return Promise.resolve();
    });
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) all.set(p, (at += p.length) - p.length);
    return new TextDecoder().decode(all);
  };
  try {
    await t.step("a chunked body, cut at odd places", async () => {
      assert.equal(await read("follow=true"), want);
    });
    await t.step("a body with a length", async () => {
      assert.equal(await read("plain=1"), want);
    });
    await t.step("an error answer", async () => {
      await assert.rejects(
        read("bad=1"),
        (e) => e instanceof RawHttpError && /400/.test(e.message),
      );
    });
    await t.step("no agent", async () => {
      await assert.rejects(rawGet({ path: `${dir}/none.sock` }, "/", () => Promise.resolve()));
    });
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
