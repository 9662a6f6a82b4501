// The strict HTTP/1.1 request parser: smuggling-shaped and malformed heads are errors with the
// status the proxy answers, never a request.
import assert from "node:assert/strict";
import { BufReader, HttpError, readRequestHead, requestFraming } from "../../agent/proxy/http1.ts";
import { BAD_HEADS } from "./_http1_cases.ts";

const enc = new TextEncoder();
function reader(text: string, chunk = 7): BufReader {
  const bytes = enc.encode(text);
  let off = 0;
  return new BufReader(() => {
    if (off >= bytes.length) return Promise.resolve(null);
    const part = bytes.subarray(off, off + chunk);
    off += chunk;
    return Promise.resolve(part);
  });
}

async function rejection(fn: () => Promise<unknown>): Promise<HttpError> {
  try {
    await fn();
  } catch (err) {
    assert.ok(err instanceof HttpError, String(err));
    return err;
  }
  assert.fail("expected an HttpError");
}

async function parseIn(text: string, chunk: number, maxHeadBytes?: number) {
  const head = await readRequestHead(reader(text, chunk), maxHeadBytes ? { maxHeadBytes } : {});
  return { head: head!, framing: requestFraming(head!) };
}

/**
 * Parses in 7-byte reads (the line-by-line path) and in one read (the whole-head path): both
 * must give the same head, or fail with the same status (and message, but for size limits).
 */
async function parse(text: string, maxHeadBytes?: number) {
  const settle = (p: Promise<Awaited<ReturnType<typeof parseIn>>>) =>
    p.then((v) => ({ v }), (e: unknown) => ({ e }));
  const [split, whole] = await Promise.all([
    settle(parseIn(text, 7, maxHeadBytes)),
    settle(parseIn(text, 1 << 20, maxHeadBytes)),
  ]);
  if ("v" in split && "v" in whole) assert.deepEqual(whole.v, split.v);
  else if ("e" in split && "e" in whole) {
    const [a, b] = [split.e as HttpError, whole.e as HttpError];
    // A size limit's message says where the reads hit it; the status is the same.
    if (a.status === 431) assert.equal(b.status, a.status);
    else assert.deepEqual([b.status, b.message], [a.status, a.message], "the same error both ways");
  } else assert.fail(`One path failed, the other did not: ${JSON.stringify([split, whole])}`);
  if ("e" in split) throw split.e;
  return split.v!;
}

Deno.test("readRequestHead() parses a request split across reads", async () => {
  const { head, framing } = await parse(
    "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-A:  v \r\n\r\nhello",
  );
  assert.deepEqual([head.method, head.target, head.version], ["POST", "/a?b=1", "1.1"]);
  assert.deepEqual(head.headers, [["Host", "x"], ["Content-Length", "5"], ["X-A", "v"]]);
  assert.deepEqual(framing, { kind: "length", length: 5 });
  assert.deepEqual(
    (await parse("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n")).framing,
    { kind: "chunked" },
  );
});

Deno.test("BufReader.taken() gives a head's own bytes only when one read held them", async () => {
  const dec = new TextDecoder();
  const msg = "GET /a HTTP/1.1\r\nHost: s\r\n\r\nbody";
  // Each read is a view into a larger buffer with other bytes before it (like node's pool).
  const views = (parts: string[]) => {
    let i = 0;
    return new BufReader(() => {
      const p = parts[i++];
      if (p === undefined) return Promise.resolve(null);
      const pool = enc.encode(`XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX${p}`);
      return Promise.resolve(pool.subarray(32));
    });
  };
  const whole = views([msg]);
  const head = (await readRequestHead(whole))!;
  assert.equal(dec.decode(whole.taken(head.size)), msg.slice(0, -4));
  whole.take(4);
  assert.equal(dec.decode(whole.taken(head.size + 4)), msg);
  assert.equal(whole.taken(head.size + 5), undefined, "not past the read's start");
  const split = views([msg.slice(0, 20), msg.slice(20)]);
  const h2 = (await readRequestHead(split))!;
  assert.equal(h2.size, head.size);
  assert.equal(split.taken(h2.size), undefined, "a head over two reads is not at hand");
});

Deno.test("readRequestHead() refuses smuggling and malformed heads with their status", async (t) => {
  for (const [name, text, status] of BAD_HEADS) {
    await t.step(name, async () => {
      const err = await rejection(() => parse(text));
      assert.deepEqual(err.status, status, err.message);
    });
  }
  await t.step("oversized headers: 431", async () => {
    const big = `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20000)}\r\n\r\n`;
    assert.deepEqual((await rejection(() => parse(big))).status, 431);
    const many = `GET / HTTP/1.1\r\nHost: x\r\n${"X: y\r\n".repeat(200)}\r\n`;
    assert.deepEqual((await rejection(() => parse(many))).status, 431);
  });
});
