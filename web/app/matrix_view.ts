// The reachability view for one port and protocol, as a matrix (rows = from, columns = to) or as
// a graph (graph_view.ts), toggled in its toolbar. Rows and columns are the endpoints, the CIDRs
// the policies and queries name, `world` and the host; each flow allowed, audited or denied as
// the engine judged it, and "–" where neither side is an endpoint. Selecting a cell or an edge
// (click, Enter) shows that flow's explanation below and asks the app to highlight the YAML that
// decided it. This module is browser compatible (it needs a DOM).

import { queryName } from "../../policy-wasm/mod.ts";
import { fill, h } from "./dom.ts";
import { explanation, sourceLinks } from "./explanation.ts";
import { renderGraph } from "./graph_view.ts";
import type { MatrixPeer } from "./peers.ts";
import type { MatrixCell, Probe, Protocol, SourceSpan } from "./simulation.ts";

export interface MatrixEvents {
  onProbe(probe: Probe): void;
  /** `from` and `to` as a query names them (an endpoint, {cidr}, {entity}). */
  onAddQuery(cell: MatrixCell, probe: Probe, refs: Pick<MatrixPeer, "ref">[]): void;
  onTestL7(cell: MatrixCell, probe: Probe): void;
  /** A flow was selected: highlight what decided it. */
  onSelect(cell: MatrixCell): void;
  onShowSource(span: SourceSpan): void;
}

const PROTOCOLS: Protocol[] = ["TCP", "UDP", "SCTP", "ICMP"];

type Mode = "matrix" | "graph";

export class MatrixView {
  #events: MatrixEvents;
  #port: HTMLInputElement;
  #protocol: HTMLSelectElement;
  #portLabel: HTMLElement;
  #modeButtons: Record<Mode, HTMLButtonElement>;
  #denied: HTMLInputElement;
  #grid: HTMLElement;
  #detail: HTMLElement;
  #probe: Probe = { port: 80, protocol: "TCP" };
  #mode: Mode = "matrix";
  #cells: MatrixCell[][] | undefined;
  #peers: MatrixPeer[] = [];
  #message: string | undefined;
  #selected: { from: string; to: string } | undefined;
  /** Phones: the graph's compact layout. */
  #narrow = matchMedia("(max-width: 700px)");

  constructor(el: HTMLElement, events: MatrixEvents) {
    this.#events = events;
    this.#narrow.addEventListener("change", () => {
      if (this.#mode === "graph") this.#draw();
    });
    const changed = () => {
      const port = Number(this.#port.value);
      const ok = Number.isInteger(port) && port >= 0 && port <= 65535 && this.#port.value !== "";
      this.#port.classList.toggle("invalid", !ok);
      if (!ok) return;
      this.#probe = { port, protocol: this.#protocol.value as Protocol };
      this.#syncPortLabel();
      this.#events.onProbe(this.#probe);
    };
    this.#port = h("input", {
      type: "number",
      min: 0,
      max: 65535,
      class: "port",
      "data-testid": "matrix-port",
      "aria-label": "Port",
      oninput: changed,
    });
    this.#protocol = h(
      "select",
      { "data-testid": "matrix-protocol", "aria-label": "Protocol", onchange: changed },
      ...PROTOCOLS.map((p) => h("option", { value: p }, p)),
    );
    this.#portLabel = h("span", {}, "Port");
    const modeButton = (mode: Mode, text: string) =>
      h("button", {
        type: "button",
        class: "segment",
        "data-testid": `view-${mode}`,
        "aria-pressed": String(mode === this.#mode),
        onclick: () => this.setMode(mode),
      }, text);
    this.#modeButtons = {
      matrix: modeButton("matrix", "Matrix"),
      graph: modeButton("graph", "Graph"),
    };
    this.#denied = h("input", {
      type: "checkbox",
      "data-testid": "graph-denied",
      onchange: () => this.#draw(),
    });
    this.#grid = h("div", { class: "matrix-wrap" });
    this.#detail = h("div", { class: "matrix-detail" });
    fill(
      el,
      h(
        "div",
        { class: "toolbar" },
        h("label", { class: "field" }, this.#portLabel, this.#port),
        h("label", { class: "field" }, h("span", {}, "Protocol"), this.#protocol),
        h(
          "div",
          { class: "segmented", role: "group", "aria-label": "View" },
          this.#modeButtons.matrix,
          this.#modeButtons.graph,
        ),
        h("label", { class: "graph-only check" }, this.#denied, "Show denied"),
        h("span", { class: "spacer" }),
        h(
          "span",
          { class: "legend" },
          h("span", { class: "swatch allowed" }),
          "allowed",
          h("span", { class: "swatch l7" }),
          "L7 rules apply",
          h("span", { class: "swatch audited" }),
          "audit",
          h("span", { class: "swatch denied" }),
          "denied",
        ),
      ),
      this.#grid,
      this.#detail,
    );
    el.dataset.mode = this.#mode;
  }

  get probe(): Probe {
    return this.#probe;
  }

  setProbe(probe: Probe): void {
    this.#probe = probe;
    this.#port.value = String(probe.port);
    this.#port.classList.remove("invalid");
    this.#protocol.value = probe.protocol;
    this.#syncPortLabel();
  }

  setMode(mode: Mode): void {
    this.#mode = mode;
    for (const [m, b] of Object.entries(this.#modeButtons)) {
      b.setAttribute("aria-pressed", String(m === mode));
    }
    this.#grid.parentElement!.dataset.mode = mode;
    this.#draw();
  }

  #syncPortLabel(): void {
    this.#portLabel.textContent = this.#probe.protocol === "ICMP" ? "ICMP type" : "Port";
  }

  /** Draws the matrix or graph, or `message` when there is none. */
  render(cells: MatrixCell[][] | undefined, peers: MatrixPeer[], message?: string): void {
    this.#cells = cells;
    this.#peers = peers;
    this.#message = message;
    this.#draw();
  }

  #draw(): void {
    const cells = this.#cells;
    if (!cells) {
      fill(this.#grid, h("p", { class: "empty" }, this.#message ?? ""));
      fill(this.#detail);
      return;
    }
    if (!this.#peers.some((p) => p.kind === "endpoint")) {
      fill(this.#grid, h("p", { class: "empty" }, "Add endpoints to see who may reach whom."));
      fill(this.#detail);
      return;
    }
    if (this.#mode === "graph") {
      fill(
        this.#grid,
        renderGraph({
          peers: this.#peers,
          cells,
          showDenied: this.#denied.checked,
          compact: this.#narrow.matches,
          selected: this.#selected,
          onSelect: (c) => this.#select(c, "graph-edge"),
        }),
      );
    } else {
      fill(this.#grid, this.#table(cells));
    }
    this.#showDetail();
  }

  #table(cells: MatrixCell[][]): HTMLElement {
    // A prefix may wrap before its length: "203.0.113.128" / "/25".
    const text = (name: string) => {
      const slash = name.lastIndexOf("/");
      return slash < 0 ? [name] : [name.slice(0, slash), h("wbr"), name.slice(slash)];
    };
    const label = (p: MatrixPeer, scope: "col" | "row") =>
      h("th", { scope, class: `peer ${p.kind}`, title: p.title }, ...text(p.name));
    const head = h(
      "tr",
      {},
      h("th", { class: "corner" }, h("span", {}, "from ↓"), h("span", {}, "to →")),
      ...this.#peers.map((p) => label(p, "col")),
    );
    const rows = cells.map((row, i) =>
      h("tr", {}, label(this.#peers[i]!, "row"), ...row.map((c) => this.#cell(c)))
    );
    return h(
      "table",
      { class: "matrix", "data-testid": "matrix" },
      h("thead", {}, head),
      h("tbody", {}, ...rows),
    );
  }

  #select(c: MatrixCell, testid: string): void {
    this.#selected = { from: c.from, to: c.to };
    this.#draw();
    this.#events.onSelect(c);
    // Re-rendering replaced the element: keep keyboard focus on it (Enter, Space).
    this.#grid.querySelector<HTMLElement>(
      `[data-testid=${testid}][data-from="${CSS.escape(c.from)}"][data-to="${CSS.escape(c.to)}"]`,
    )?.focus();
  }

  #cell(c: MatrixCell): HTMLElement {
    if (c.na) {
      return h(
        "td",
        {},
        h("span", {
          class: "cell na",
          "data-testid": "matrix-na",
          title: c.reason,
        }, "–"),
      );
    }
    const selected = this.#selected?.from === c.from && this.#selected.to === c.to;
    return h(
      "td",
      {},
      h(
        "button",
        {
          type: "button",
          class: `cell ${c.verdict}${c.l7 ? " l7" : ""}${selected ? " selected" : ""}`,
          "data-testid": "matrix-cell",
          "data-from": c.from,
          "data-to": c.to,
          "data-verdict": c.verdict,
          title: c.reason,
          onclick: () => this.#select(c, "matrix-cell"),
        },
        c.verdict === "allowed" ? "✓ allowed" : c.verdict === "audited" ? "✓ audit" : "✗ denied",
        c.l7 ? h("span", { class: "tag l7" }, "L7") : null,
      ),
    );
  }

  #showDetail(): void {
    const sel = this.#selected;
    const cell = sel &&
      this.#cells?.flat().find((c) => !c.na && c.from === sel.from && c.to === sel.to);
    if (!cell) {
      const what = this.#mode === "graph" ? "an arrow" : "a cell";
      fill(this.#detail, h("p", { class: "hint" }, `Select ${what} to see why.`));
      return;
    }
    const probe = this.#probe;
    const peer = (name: string) => this.#peers.find((p) => p.name === name);
    const actions = [
      cell.l7 && peer(cell.from)?.kind === "endpoint" && peer(cell.to)?.kind === "endpoint"
        ? h("button", {
          type: "button",
          class: "small",
          onclick: () => this.#events.onTestL7(cell, probe),
        }, "Test an L7 request")
        : null,
      h("button", {
        type: "button",
        class: "small",
        "data-testid": "add-query",
        onclick: () =>
          this.#events.onAddQuery(cell, probe, [
            peer(cell.from) ?? { ref: cell.from },
            peer(cell.to) ?? { ref: cell.to },
          ]),
      }, "Add as query"),
    ];
    fill(
      this.#detail,
      explanation(
        queryName({ from: cell.from, to: cell.to, ...probe }, cell),
        cell,
        actions,
        sourceLinks(cell.sources, (s) => this.#events.onShowSource(s)),
      ),
    );
  }
}
