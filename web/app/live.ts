// Live mode (the page served by `cilia ui`): loads the node's endpoints and policies into the
// editor and matrix read-only (Fork makes them a draft), shows the agent's flows (observe's filters,
// refreshed every 2 s, pausable) and the service map, replays the flows against the draft with the
// same replayTraffic() as `cilia policy replay`, and fills a draft from traffic with
// suggestPolicies() and its scenario. It reads through the bridge only. This module is browser
// compatible (it needs a DOM).

import {
  loadScenario,
  type ObservedTraffic,
  observeFlows,
  PolicyEngine,
  type ReplayReport,
  replaySummaryText,
  replayTraffic,
  scenarioYaml,
  suggestPolicies,
  suggestScenario,
} from "../../policy-wasm/mod.ts";
import type { App } from "./app.ts";
import { byId, fill, h } from "./dom.ts";
import { Bridge, filterParams } from "./live_bridge.ts";
import { renderServiceMap } from "./live_map.ts";
import { toast } from "./panels.ts";

const LAST = 2000;

// deno-lint-ignore no-explicit-any
type Flow = any;

export class LiveView {
  #bridge: Bridge;
  #app: App;
  #el = byId("tab-live");
  #engine: Promise<PolicyEngine> | undefined;
  #paused = false;
  #timer: ReturnType<typeof setInterval> | undefined;
  #flowsEl = h("div", { class: "table-wrap live-flows", "data-testid": "live-flows" });
  #mapEl = h("div", { class: "live-map" });
  #edgeEl = h("div", { class: "live-edge", "data-testid": "live-edge" });
  #replayEl = h("div", { class: "live-replay", "data-testid": "live-replay" });
  #filter = h("input", {
    class: "live-filter",
    "data-testid": "live-filter",
    placeholder: "--from-pod default/frontend --verdict DROPPED",
    "aria-label": "Flow filters (cilia observe's)",
  });
  #mapKey = "";
  #status = h("span", { class: "status", "data-testid": "live-status" });

  constructor(app: App, token: string) {
    this.#app = app;
    this.#bridge = new Bridge(token);
    const tab = document.querySelector<HTMLButtonElement>('[data-tab="live"]')!;
    tab.hidden = false;
    const pause = h(
      "button",
      { type: "button", class: "small", "data-testid": "live-pause" },
      "Pause",
    );
    pause.addEventListener("click", () => {
      this.#paused = !this.#paused;
      pause.textContent = this.#paused ? "Resume" : "Pause";
    });
    this.#filter.addEventListener("change", () => this.refresh());
    const button = (label: string, id: string, run: () => Promise<void> | void, title: string) =>
      h("button", {
        type: "button",
        class: "small",
        "data-testid": id,
        title,
        onclick: () => Promise.resolve(run()).catch((e) => toast(String(e?.message ?? e), "error")),
      }, label);
    fill(
      this.#el,
      h(
        "div",
        { class: "live-bar" },
        h("span", { class: "tag live" }, "LIVE"),
        this.#status,
        h("span", { class: "spacer" }),
        button(
          "Reload cluster",
          "live-reload",
          () => this.loadCluster(),
          "Load the node's endpoints and policies (read-only)",
        ),
        button(
          "Fork into draft",
          "live-fork",
          () => this.fork(),
          "Edit the cluster's policies as a draft",
        ),
        button(
          "Replay",
          "live-replay-run",
          () => this.replay(),
          "What would the draft change for the observed connections?",
        ),
        button(
          "Suggest from traffic",
          "live-suggest",
          () => this.suggest(),
          "A least-privilege draft from the observed connections",
        ),
      ),
      this.#replayEl,
      h("h3", {}, "Service map"),
      this.#mapEl,
      this.#edgeEl,
      h("div", { class: "live-bar" }, h("h3", {}, "Flows"), this.#filter, pause),
      this.#flowsEl,
    );
  }

  async start(): Promise<void> {
    await this.loadCluster();
    await this.refresh();
    this.#timer = setInterval(() => {
      if (!this.#paused && !document.hidden) this.refresh().catch(() => {});
    }, 2000);
    this.#app.selectTab("live");
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  async loadCluster(): Promise<void> {
    const s = await this.#bridge.cluster();
    this.#app.load(loadScenario(JSON.stringify(s), "live").scenario);
    this.#app.setReadOnly(true);
    this.#status.textContent =
      `${s.endpoints.length} endpoints · ${s.policies.length} policies · read-only`;
    this.#app.selectTab("live");
  }

  fork(): void {
    this.#app.setReadOnly(false);
    this.#status.textContent = "draft: edits stay in the browser; the cluster is unchanged";
    toast("Forked into a draft: edit the policies, then Replay to see what would change");
  }

  async #traffic(): Promise<ObservedTraffic> {
    return observeFlows(await this.#bridge.flows(new URLSearchParams({ last: String(LAST) })));
  }

  async replay(): Promise<void> {
    const engine = await (this.#engine ??= PolicyEngine.create());
    const r = replayTraffic(engine, await this.#traffic(), [{
      text: this.#app.policiesText(),
      file: "draft.yaml",
    }]);
    this.#renderReplay(r);
  }

  async suggest(): Promise<void> {
    const traffic = await this.#traffic();
    const s = suggestPolicies(traffic);
    if (s.policies.length === 0) return toast("No allowed connection observed yet", "error");
    const text = scenarioYaml(suggestScenario(s, traffic));
    this.#app.load(loadScenario(text, "suggested.scenario.yaml").scenario);
    this.fork();
    this.#app.selectTab("queries");
  }

  async refresh(): Promise<void> {
    let params: URLSearchParams;
    try {
      params = filterParams(this.#filter.value);
    } catch (e) {
      return toast((e as Error).message, "error");
    }
    params.set("last", "200");
    const text = await this.#bridge.flows(params);
    const flows: Flow[] = text.split("\n").filter(Boolean).map((l) => JSON.parse(l)).flatMap((
      v,
    ) => v.flow ? [v.flow] : []);
    this.#renderFlows(flows);
    const t = observeFlows(text);
    // Redraw only when the traffic changed, so a click on an edge is not lost to a refresh.
    const key = t.connections.map((c) => `${c.key}=${c.observed}`).join("\n");
    if (key === this.#mapKey) return;
    this.#mapKey = key;
    renderServiceMap(this.#mapEl, t.connections, (label, conns) =>
      fill(
        this.#edgeEl,
        h("h4", {}, label),
        h(
          "ul",
          {},
          ...conns.map((c) =>
            h(
              "li",
              {},
              `${c.protocol}/${c.port}${
                c.http ? ` ${c.http.method} ${c.http.path}` : ""
              } — ${c.observed} (${c.flows} flows)`,
            )
          ),
        ),
      ));
  }

  #renderFlows(flows: Flow[]): void {
    const peer = (e: Flow, ip: string | undefined) =>
      e?.pod_name ? `${e.namespace}/${e.pod_name}` : ip ?? (e?.labels ?? []).join(",");
    const port = (f: Flow) => {
      const l4 = f.l4 ?? {};
      const k = Object.keys(l4)[0];
      return k ? `${k}/${l4[k].destination_port ?? l4[k].type ?? ""}` : "";
    };
    // The service the flow went through (a client's packets to it, replies from it).
    const service = (f: Flow) => {
      const s = f.destination_service ?? f.source_service;
      return s ? `${s.name ? `${s.namespace}/${s.name} ` : ""}${s.frontend}` : "";
    };
    const rows = flows.slice().reverse().map((f) =>
      h(
        "tr",
        { class: f.verdict === "DROPPED" ? "denied" : "allowed" },
        h("td", {}, String(f.time ?? "").slice(11, 23)),
        h("td", {}, peer(f.source, f.IP?.source)),
        h("td", {}, peer(f.destination, f.IP?.destination)),
        h("td", {}, service(f)),
        h("td", {}, port(f)),
        h("td", { class: "verdict" }, f.verdict),
        h("td", {}, f.l7?.http ? `${f.l7.http.method} ${f.l7.http.url}` : f.Summary ?? ""),
        h("td", { class: "why" }, f.policy?.text ?? ""),
      )
    );
    fill(
      this.#flowsEl,
      h(
        "table",
        { class: "grid" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ...["TIME", "SOURCE", "DESTINATION", "SERVICE", "PORT", "VERDICT", "SUMMARY", "POLICY"]
              .map((c) => h("th", {}, c)),
          ),
        ),
        h("tbody", {}, ...rows),
      ),
    );
  }

  #renderReplay(r: ReplayReport): void {
    fill(
      this.#replayEl,
      h(
        "p",
        { class: "replay-summary", "data-testid": "replay-summary" },
        replaySummaryText(r.summary),
      ),
      r.changes.length === 0 ? null : h(
        "table",
        { class: "grid" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", {}, "CHANGE"),
            h("th", {}, "CONNECTION"),
            h("th", {}, "THE DRAFT SAYS"),
          ),
        ),
        h(
          "tbody",
          {},
          ...r.changes.map((c) =>
            h(
              "tr",
              {
                class: c.change === "newly-denied" ? "denied" : "allowed",
                "data-change": c.change,
              },
              h("td", {}, c.change.replace("-", " ")),
              h("td", { class: "connection" }, c.connection),
              h("td", { class: "why", title: c.trace.join("\n") }, c.reason),
            )
          ),
        ),
      ),
    );
  }
}
