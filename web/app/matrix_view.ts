// The reachability matrix: every endpoint to every endpoint (rows = from, columns = to) for one
// port and protocol, each cell allowed or denied as the engine judged it; a click shows that
// flow's explanation below the matrix. This module is browser compatible (it needs a DOM).

import { queryName } from "../../policy-wasm/mod.ts";
import { fill, h } from "./dom.ts";
import { explanation } from "./explanation.ts";
import type { MatrixCell, Probe, Protocol } from "./simulation.ts";

export interface MatrixEvents {
  onProbe(probe: Probe): void;
  onAddQuery(cell: MatrixCell, probe: Probe): void;
  onTestL7(cell: MatrixCell, probe: Probe): void;
}

const PROTOCOLS: Protocol[] = ["TCP", "UDP", "SCTP", "ICMP"];

export class MatrixView {
  #events: MatrixEvents;
  #port: HTMLInputElement;
  #protocol: HTMLSelectElement;
  #portLabel: HTMLElement;
  #grid: HTMLElement;
  #detail: HTMLElement;
  #probe: Probe = { port: 80, protocol: "TCP" };
  #cells: MatrixCell[][] | undefined;
  #selected: { from: string; to: string } | undefined;

  constructor(el: HTMLElement, events: MatrixEvents) {
    this.#events = events;
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
    this.#grid = h("div", { class: "matrix-wrap" });
    this.#detail = h("div", { class: "matrix-detail" });
    fill(
      el,
      h(
        "div",
        { class: "toolbar" },
        h("label", { class: "field" }, this.#portLabel, this.#port),
        h("label", { class: "field" }, h("span", {}, "Protocol"), this.#protocol),
        h("span", { class: "spacer" }),
        h(
          "span",
          { class: "legend" },
          h("span", { class: "swatch allowed" }),
          "allowed",
          h("span", { class: "swatch l7" }),
          "allowed, L7 rules apply",
          h("span", { class: "swatch denied" }),
          "denied",
        ),
      ),
      this.#grid,
      this.#detail,
    );
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

  #syncPortLabel(): void {
    this.#portLabel.textContent = this.#probe.protocol === "ICMP" ? "ICMP type" : "Port";
  }

  /** Draws the matrix, or `message` when there is none. */
  render(cells: MatrixCell[][] | undefined, message?: string): void {
    this.#cells = cells;
    if (!cells) {
      fill(this.#grid, h("p", { class: "empty" }, message ?? ""));
      fill(this.#detail);
      return;
    }
    if (cells.length === 0) {
      fill(this.#grid, h("p", { class: "empty" }, "Add endpoints to see who may reach whom."));
      fill(this.#detail);
      return;
    }
    const names = cells.map((row) => row[0]!.from);
    const head = h(
      "tr",
      {},
      h("th", { class: "corner" }, h("span", {}, "from ↓"), h("span", {}, "to →")),
      ...names.map((n) => h("th", { scope: "col" }, n)),
    );
    const rows = cells.map((row) =>
      h("tr", {}, h("th", { scope: "row" }, row[0]!.from), ...row.map((c) => this.#cell(c)))
    );
    fill(
      this.#grid,
      h(
        "table",
        { class: "matrix", "data-testid": "matrix" },
        h("thead", {}, head),
        h("tbody", {}, ...rows),
      ),
    );
    this.#showDetail();
  }

  #cell(c: MatrixCell): HTMLElement {
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
          onclick: () => {
            this.#selected = { from: c.from, to: c.to };
            this.render(this.#cells);
            // Re-rendering replaced the button: keep keyboard focus on the cell (Enter, Space).
            this.#grid.querySelector<HTMLElement>(
              `[data-testid=matrix-cell][data-from="${CSS.escape(c.from)}"][data-to="${
                CSS.escape(c.to)
              }"]`,
            )?.focus();
          },
        },
        c.verdict === "allowed" ? "✓ allowed" : "✗ denied",
        c.l7 ? h("span", { class: "tag l7" }, "L7") : null,
      ),
    );
  }

  #showDetail(): void {
    const sel = this.#selected;
    const cell = sel && this.#cells?.flat().find((c) => c.from === sel.from && c.to === sel.to);
    if (!cell) {
      fill(this.#detail, h("p", { class: "hint" }, "Click a cell to see why."));
      return;
    }
    const probe = this.#probe;
    const actions = [
      cell.l7
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
        onclick: () => this.#events.onAddQuery(cell, probe),
      }, "Add as query"),
    ];
    fill(
      this.#detail,
      explanation(queryName({ from: cell.from, to: cell.to, ...probe }, cell), cell, actions),
    );
  }
}
