// The simulator's controller: owns the workspace (the scenario being edited), loads scenarios
// (share link, tutorial, import), re-runs the engine after every edit and hands the results to
// the views, and keeps the location hash a share link of the current scenario. Verdicts come only
// from Simulator (the engine). This module is browser compatible (it needs a DOM).

import {
  formatIssue,
  loadScenario,
  PolicyValidationError,
  type Scenario,
} from "../../policy-wasm/mod.ts";
import { EXAMPLES, FOOTGUNS, TUTORIALS } from "../tutorials.ts";
import { byId, debounce } from "./dom.ts";
import { createPolicyEditor, type PolicyEditor } from "./editor.ts";
import { EndpointsTable } from "./endpoints_table.ts";
import { L7Tester } from "./l7_tester.ts";
import { MatrixView } from "./matrix_view.ts";
import { scenarioOf, type ScenarioQuery, type Workspace, workspaceOf } from "./model.ts";
import { initTabs, renderNotes, renderProblems, type TabName, toast } from "./panels.ts";
import { QueriesView } from "./queries_view.ts";
import { scenarioFileName, scenarioFromHash, scenarioYaml, shareHash } from "./scenario_io.ts";
import type { Probe, Simulator } from "./simulation.ts";
import { Toolbar } from "./toolbar.ts";

export class App {
  #sim: Simulator;
  #ws: Workspace = { policies: "", endpoints: [], queries: [] };
  #root = byId("app");
  #editor: PolicyEditor;
  #endpoints: EndpointsTable;
  #matrix: MatrixView;
  #l7: L7Tester;
  #queries: QueriesView;
  #toolbar: Toolbar;
  #tabs = initTabs(document.querySelector<HTMLElement>(".tabs")!);
  #runs = 0;
  /** The hash this app last wrote, so that its own updates are not reloaded. */
  #written = "";
  #runSoon = debounce(() => this.run(), 200);
  #hashSoon = debounce(() => this.#writeHash(), 500);

  constructor(sim: Simulator) {
    this.#sim = sim;
    this.#editor = createPolicyEditor(byId("editor"), (text) => {
      this.#ws.policies = text;
      this.#changed(true);
    });
    this.#endpoints = new EndpointsTable(byId("endpoints"), {
      onChange: (kind) => this.#changed(kind === "edit"),
    });
    byId("add-endpoint").addEventListener("click", () => this.#endpoints.add());
    this.#matrix = new MatrixView(byId("tab-matrix"), {
      onProbe: () => this.run(),
      onAddQuery: (c, p, [from, to]) =>
        this.#addQuery({
          from: from?.ref ?? c.from,
          to: to?.ref ?? c.to,
          ...portOf(p),
          expect: c.verdict,
        }),
      onSelect: (c) => this.#editor.highlight(c.sources),
      onShowSource: (s) => this.#editor.highlight([s]),
      onTestL7: (c, p) => {
        this.#l7.prefill({ from: c.from, to: c.to, port: p.port });
        this.#tabs.select("l7");
      },
    });
    this.#l7 = new L7Tester(byId("tab-l7"), {
      judge: (input) => this.#sim.flow(input),
      onAddQuery: (q) => this.#addQuery(q),
      onShowSource: (s) => this.#editor.highlight([s]),
    });
    this.#queries = new QueriesView(byId("tab-queries"), byId("queries-badge"), {
      onRemove: (i) => {
        this.#ws.queries.splice(i, 1);
        this.#changed(false);
      },
      onOpenL7: (q) => this.#openL7(q),
      onSelect: (o) => this.#editor.highlight(o.sources),
      onShowSource: (s) => this.#editor.highlight([s]),
    });
    this.#toolbar = new Toolbar([
      { label: "Examples", tutorials: EXAMPLES },
      { label: "Footguns", tutorials: FOOTGUNS },
    ], {
      onNew: () => {
        this.load({ policies: [], endpoints: [], queries: [] });
        this.#editor.focus();
      },
      onRename: (name) => {
        this.#ws.name = name || undefined;
        this.#hashSoon();
      },
      onTutorial: (id) => this.openTutorial(id),
      onImport: (text, fileName) => this.#import(text, fileName),
      exportFile: () => {
        const s = this.scenario();
        return { text: scenarioYaml(s), fileName: scenarioFileName(s) };
      },
      shareUrl: () => {
        this.#hashSoon.cancel();
        this.#writeHash();
        return location.href;
      },
    });
    const tabIndents = byId<HTMLInputElement>("tab-indents");
    tabIndents.addEventListener("change", () => this.#editor.setTabIndents(tabIndents.checked));
    addEventListener("hashchange", () => {
      if (location.hash !== this.#written) this.openHash();
    });
  }

  /** The current scenario, as exported and shared. */
  scenario(): Scenario {
    return scenarioOf(this.#ws);
  }

  /** Opens the scenario or tutorial the location hash names; false when it names none. */
  openHash(): boolean {
    const hash = location.hash;
    const tutorial = /(?:^#|&)tutorial=([\w-]+)/.exec(hash)?.[1];
    if (tutorial) return this.openTutorial(tutorial), true;
    try {
      const loaded = scenarioFromHash(hash);
      if (!loaded) return false;
      this.load(loaded.scenario);
    } catch (e) {
      toast(`Cannot open the link: ${message(e)}`, "error");
      return false;
    }
    return true;
  }

  openTutorial(id: string): void {
    const t = TUTORIALS.find((t) => t.id === id);
    if (!t) return toast(`Unknown tutorial "${id}"`, "error");
    this.load(loadScenario(JSON.stringify(t.scenario), t.id).scenario, t.id);
  }

  load(s: Scenario, tutorial?: string): void {
    this.#ws = workspaceOf(s);
    this.#toolbar.setName(s.name);
    this.#toolbar.setTutorial(tutorial);
    renderNotes(byId("notes"), { name: s.name, description: s.description, tutorial: !!tutorial });
    this.#editor.setText(this.#ws.policies);
    this.#endpoints.render(this.#ws.endpoints);
    this.#matrix.setProbe(defaultProbe(s));
    this.#queries.reset();
    this.#l7.setEndpoints(this.#ws.endpoints);
    const l7 = s.queries.find((q) => q.http || q.kafka);
    if (l7) this.#l7.setRequest(l7), this.#l7.prefill(l7Target(l7));
    this.#tabs.select(s.queries.length > 0 ? "queries" : "matrix");
    this.#runSoon.cancel();
    this.run();
    this.#hashSoon.cancel();
    this.#writeHash();
  }

  /** Runs the engine on the workspace and refreshes every view. */
  run(): void {
    this.#runSoon.cancel();
    const r = this.#sim.run(this.#ws, this.#matrix.probe);
    this.#editor.showDiagnostics(r.diagnostics);
    renderProblems(byId("problems"), byId("policy-status"), r, (d) => {
      if (d.line !== undefined) this.#editor.goTo(d.line, d.column);
    });
    this.#endpoints.setIdentities(r.identities);
    const status = byId("endpoints-status");
    status.textContent = r.setupError ?? "";
    status.className = `status ${r.setupError ? "bad" : ""}`;
    const why = r.errors > 0
      ? "Fix the errors in the policies to see verdicts."
      : r.setupError
      ? `Fix the endpoints to see verdicts: ${r.setupError}`
      : undefined;
    this.#matrix.render(r.matrix, r.peers, why);
    this.#queries.render(r.matrix ? r.queries : undefined, why);
    this.#l7.setEndpoints(this.#ws.endpoints);
    this.#l7.refresh();
    this.#root.dataset.state = why ? "invalid" : "ready";
    this.#root.dataset.runs = String(++this.#runs);
  }

  /** Live mode: the cluster's policies are read-only until forked into a draft. */
  setReadOnly(on: boolean): void {
    this.#editor.setReadOnly(on);
    this.#root.dataset.readonly = String(on);
  }

  /** The policies being edited, as one `---`-separated text. */
  policiesText(): string {
    return this.#ws.policies;
  }

  selectTab(name: TabName): void {
    this.#tabs.select(name);
  }

  #changed(soon: boolean): void {
    if (soon) this.#runSoon();
    else this.run();
    this.#hashSoon();
  }

  #addQuery(q: ScenarioQuery): void {
    this.#ws.queries.push(q);
    this.#changed(false);
    toast(
      `Added query ${this.#ws.queries.length}: ${peerText(q.from)} → ${
        peerText(q.to)
      } (${q.expect})`,
    );
  }

  #openL7(q: ScenarioQuery): void {
    this.#l7.setRequest(q);
    this.#l7.prefill(l7Target(q));
    this.#tabs.select("l7");
  }

  #import(text: string, fileName: string): void {
    try {
      this.load(loadScenario(text, fileName).scenario);
      toast(`Opened ${fileName}`);
    } catch (e) {
      if (/^\s*kind:/m.test(text) && /^\s*apiVersion:/m.test(text)) {
        this.#ws.policies = text;
        this.#editor.setText(text);
        this.#changed(false);
        toast(`Loaded the policies of ${fileName}; endpoints and queries are unchanged`);
        return;
      }
      toast(`Cannot import ${fileName}: ${message(e)}`, "error");
    }
  }

  #writeHash(): void {
    this.#written = `#${shareHash(this.scenario())}`;
    if (location.hash !== this.#written) history.replaceState(null, "", this.#written);
  }
}

function message(e: unknown): string {
  if (e instanceof PolicyValidationError) {
    const more = e.issues.length > 1 ? ` (and ${e.issues.length - 1} more)` : "";
    return e.issues[0] ? formatIssue(e.issues[0]) + more : e.message;
  }
  return e instanceof Error ? e.message : String(e);
}

function portOf(p: Probe): Pick<ScenarioQuery, "port" | "protocol" | "icmpType"> {
  return p.protocol === "ICMP"
    ? { port: 0, protocol: "ICMP", icmpType: p.port }
    : { port: p.port, protocol: p.protocol };
}

function peerText(p: ScenarioQuery["from"]): string {
  if (typeof p === "string") return p;
  return "endpoint" in p ? p.endpoint : "cidr" in p ? p.cidr : p.entity;
}

function l7Target(q: ScenarioQuery): { from: string; to: string; port: number } {
  const name = (p: ScenarioQuery["from"]) =>
    typeof p === "string" ? p : "endpoint" in p ? p.endpoint : "";
  return { from: name(q.from), to: name(q.to), port: q.port };
}

/** The matrix opens on the first query's port, else TCP/80. */
function defaultProbe(s: Scenario): Probe {
  const q = s.queries.find((q) => q.port > 0 && q.protocol !== "ICMP");
  return q
    ? { port: q.port, protocol: q.protocol as Probe["protocol"] }
    : { port: 80, protocol: "TCP" };
}
