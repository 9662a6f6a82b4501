// The simulator's entry point in the browser: loads the policy engine (the embedded policy.wasm),
// builds the app and opens the scenario of the location hash, or the first tutorial. This module
// is browser compatible (it needs a DOM).

import "./zod_jitless.ts";
import { App } from "./app.ts";
import { fill, h } from "./dom.ts";
import { Simulator } from "./simulation.ts";
import { TUTORIALS } from "../tutorials.ts";
import { liveToken } from "./live_bridge.ts";
import { LiveView } from "./live.ts";

async function main(): Promise<void> {
  const sim = await Simulator.create();
  const app = new App(sim);
  const token = liveToken();
  // Served by `cilia ui`: the live cluster; else the share link or the first tutorial.
  if (token) await new LiveView(app, token).start();
  else if (!app.openHash()) app.openTutorial(TUTORIALS[0]!.id);
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
