// The simulator's entry point in the browser: streams and compiles policy.wasm (index.html
// preloads it), requests the CodeMirror chunk at once (it arrives while the engine compiles;
// editor.ts swaps it in), builds the app and opens the scenario of the location hash, or the first tutorial.
// Live mode (`cilia ui`) is a chunk of its own, loaded only when the URL has a token. This module
// is browser compatible (it needs a DOM).

import "./zod_jitless.ts";
import { App } from "./app.ts";
import { fill, h } from "./dom.ts";
import { Simulator } from "./simulation.ts";
import { TUTORIALS } from "../tutorials.ts";
import { liveToken } from "./live_bridge.ts";
import { loadCodeMirror } from "./editor.ts";

/** policy.wasm (preloaded by index.html), compiled while it streams in; undefined when the file
 * cannot be fetched (then the engine uses the copy embedded in policy-wasm, a chunk). */
async function engineModule(): Promise<WebAssembly.Module | undefined> {
  try {
    return await WebAssembly.compileStreaming(fetch("policy.wasm"));
  } catch (e) {
    console.warn("policy.wasm could not be streamed; using the embedded engine", e);
    return undefined;
  }
}

async function main(): Promise<void> {
  const wasm = engineModule();
  loadCodeMirror().catch(() => {}); // editor.ts reports a failure
  const sim = await Simulator.create(await wasm);
  const app = new App(sim);
  const token = liveToken();
  // Served by `cilia ui`: the live cluster; else the share link or the first tutorial.
  if (token) {
    const { LiveView } = await import("./live.ts");
    await new LiveView(app, token).start();
  } else if (!app.openHash()) app.openTutorial(TUTORIALS[0]!.id);
}

main().catch((e) => {
  const root = document.getElementById("app");
  if (root) {
    root.dataset.state = "failed";
    fill(
      root,
      h(
        "p",
        { class: "fatal" },
        `The simulator could not start: ${e instanceof Error ? e.message : e}`,
      ),
    );
  }
  console.error(e);
});
