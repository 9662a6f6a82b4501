// `cilia observe` writes stdout in place (synchronous writes: an async write costs about 4× the
// CPU, `bench monitor`), so a full pipe holds it until the reader reads on: a reader that pauses
// and then reads gets every byte, in order. The CLI is the real process on a real pipe; the agent
// is a stand-in on a temp socket that streams flow lines as fast as they are taken (its lines
// pass through `-o json` unparsed), counting what it sent. Known limit (issue 9's note): while
// blocked on a pipe whose reader stopped, Ctrl-C cannot end `observe --follow` (a non-blocking
// write with poll() fixed that but cost 20-40 % of `bench monitor`'s lossless rate: backed out).
import assert from "node:assert/strict";
import { root } from "../agent/_fixture.ts";

const LINE = (i: number) =>
  `{"flow":{"time":"2026-12-03T00:00:00.000Z","n":${i},"pad":"${"x".repeat(i % 251)}"}}\n`;
const CHUNK = 256;

/** A stand-in agent: /v1/flows streams lines (forever with follow=true, else `total` of them). */
function standIn(path: string, total: number) {
  const enc = new TextEncoder();
  const state = { sent: 0, lines: 0 };
  const server = Deno.serve({ path, transport: "unix", onListen() {} }, (req) => {
    const follow = new URL(req.url).searchParams.get("follow") === "true";
    return new Response(
      new ReadableStream<Uint8Array>({
        pull(ctl) {
          if (!follow && state.lines >= total) return ctl.close();
          let text = "";
          for (let k = 0; k < CHUNK && (follow || state.lines < total); k++) {
            text += LINE(state.lines++);
          }
          const bytes = enc.encode(text);
          state.sent += bytes.length;
          ctl.enqueue(bytes);
        },
      }),
      { headers: { "content-type": "application/x-ndjson" } },
    );
  });
  return { state, server };
}

function observe(path: string, args: string[]): Deno.ChildProcess {
  return new Deno.Command(`${root}bin/cilia`, {
    args: ["observe", ...args, "-o", "json", "-H", `unix://${path}`],
    env: { CILIA_DENO: Deno.execPath(), NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Resolves once `sent` stopped growing for `quietMs` (the CLI stopped taking lines). */
async function stalled(state: { sent: number }, quietMs: number, limitMs: number): Promise<void> {
  const deadline = Date.now() + limitMs;
  let last = -1, since = Date.now();
  while (Date.now() < deadline) {
    if (state.sent !== last) [last, since] = [state.sent, Date.now()];
    else if (state.sent > 0 && Date.now() - since >= quietMs) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`The stand-in kept sending for ${limitMs} ms (${state.sent} bytes)`);
}

Deno.test("cilia observe: a reader that pauses on a full pipe gets it all, in order", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-observe-stdout-" });
  const path = `${dir}/agent.sock`;
  try {
    await t.step("a reader that pauses, then reads on, gets every line in order", async () => {
      const total = 20_000; // ~3 MiB: many times the pipe
      const { state, server } = standIn(path, total);
      const child = observe(path, []);
      try {
        await stalled(state, 300, 20_000); // the pipe is full and observe waits
        const out = new Uint8Array(await new Response(child.stdout).arrayBuffer());
        const status = await child.status;
        const err = await new Response(child.stderr).text();
        assert.equal(status.code, 0, err);
        const want = Array.from({ length: total }, (_, i) => LINE(i)).join("");
        const got = new TextDecoder().decode(out);
        assert.equal(got.length, want.length, "every byte");
        assert.ok(got === want, "in order");
      } finally {
        await server.shutdown();
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
