// The simulator's static file handler and `deno task web`: content types, HEAD, 404 and 405,
// no path escapes, a mount prefix, the code-split build (chunks, policy.wasm, preloads), and
// web/serve.ts printing its URL for `--port 0`.

import { buildWeb } from "../../scripts/build_web.ts";
import { serveSimulator } from "../../web/mod.ts";
import { assert, assertEquals } from "./_assert.ts";

const ROOT = new URL("../../", import.meta.url);
/** The build under test: a temp dir, so the tests never write into the source tree. */
const OUT = await Deno.makeTempDir({ prefix: "cilia-web-" });
globalThis.addEventListener("unload", () => Deno.removeSync(OUT, { recursive: true }));

async function get(path: string, init: RequestInit & { prefix?: string } = {}) {
  const res = await serveSimulator(
    new Request(`http://127.0.0.1${path}`, init),
    { root: OUT, ...(init.prefix ? { prefix: init.prefix } : {}) },
  );
  const body = await res.text();
  return { status: res.status, type: res.headers.get("content-type") ?? "", body, res };
}

Deno.test("serveSimulator() serves the built simulator", async (t) => {
  const build = await buildWeb({ outdir: OUT });
  const names = build.files.map((f) => f.name);
  for (const n of ["app.js", "index.html", "style.css", "policy.wasm"]) {
    assert(names.includes(n), `${n} missing from ${names.join(", ")}`);
  }
  // Chunks: the CodeMirror editor and live mode load after the first screen.
  assert(names.some((n) => /^codemirror_editor-\w+\.js$/.test(n)), names.join(", "));
  assert(names.some((n) => /^live-\w+\.js$/.test(n)), names.join(", "));

  await t.step("files with their content types", async () => {
    const cases: [string, number, string][] = [
      ["/", 200, "text/html; charset=utf-8"],
      ["/index.html", 200, "text/html; charset=utf-8"],
      ["/app.js", 200, "text/javascript; charset=utf-8"],
      ["/style.css", 200, "text/css; charset=utf-8"],
      ["/missing.js", 404, "text/plain; charset=utf-8"],
      ["/%2e%2e/deno.json", 404, "text/plain; charset=utf-8"],
      ["/..%2fdeno.json", 404, "text/plain; charset=utf-8"],
      ["/.hidden", 404, "text/plain; charset=utf-8"],
    ];
    for (const [path, status, type] of cases) {
      const r = await get(path);
      assertEquals([path, r.status, r.type], [path, status, type]);
    }
    assert((await get("/")).body.includes('<script type="module" src="app.js">'));
  });

  await t.step("HEAD has headers and no body; other methods get 405", async () => {
    const head = await get("/policy.wasm", { method: "HEAD" });
    assertEquals(head.status, 200);
    assertEquals(head.body, "");
    assertEquals(head.type, "application/wasm");
    assert(Number(head.res.headers.get("content-length")) > 100_000);
    const post = await get("/", { method: "POST" });
    assertEquals([post.status, post.res.headers.get("allow")], [405, "GET, HEAD"]);
  });

  await t.step("a mount prefix", async () => {
    assertEquals((await get("/ui/app.js", { prefix: "/ui" })).status, 200);
    assertEquals((await get("/ui", { prefix: "/ui/" })).res.headers.get("location"), "/ui/");
    assertEquals((await get("/app.js", { prefix: "/ui/" })).status, 404);
  });

  await t.step("the bundle is offline and Deno-free", async () => {
    for (const n of names.filter((n) => n.endsWith(".js"))) {
      const js = await Deno.readTextFile(`${OUT}/${n}`);
      assertEquals(/\bDeno\./.test(js), false, n);
    }
    const html = await Deno.readTextFile(`${OUT}/index.html`);
    assertEquals(/(?:src|href)="https?:/.test(html), false);
  });

  await t.step(
    "index.html preloads the first screen's chunks and the engine, not the editor",
    async () => {
      const html = (await get("/")).body;
      const preloads = [...html.matchAll(/<link rel="(?:module)?preload" href="([^"]+)"/g)]
        .map((m) => m[1]!);
      assert(preloads.includes("policy.wasm"), html);
      assert(preloads.some((p) => /^chunk-\w+\.js$/.test(p)), html);
      assert(!preloads.some((p) => p.startsWith("codemirror_editor")), html);
      for (const p of preloads) assertEquals((await get(`/${p}`)).status, 200, p);
      // app.js imports exactly the chunks index.html preloads (else a round trip is lost).
      const app = (await get("/app.js")).body;
      const imported = [...app.matchAll(/from"\.\/([^"]+\.js)"/g)].map((m) => m[1]!);
      for (const i of imported) assert(preloads.includes(i), `${i} is imported but not preloaded`);
    },
  );
});

Deno.test("web/serve.ts --port 0 prints the URL and serves the simulator", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "web/serve.ts", "--port", "0"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  try {
    let out = "";
    let url: string | undefined;
    while (!url) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`web/serve.ts exited early: ${out}`);
      out += value;
      url = /http:\/\/127\.0\.0\.1:\d+\//.exec(out)?.[0];
    }
    const res = await fetch(url);
    assertEquals(res.status, 200);
    assert((await res.text()).includes("cilia · policy simulator"));
  } finally {
    child.kill("SIGTERM");
    await reader.cancel();
    await child.status;
  }
});
