// The scenario's queries, in the scenario's order, with the engine's verdicts, their expectations
// and the explanation of each (click a row). Rows can be removed or opened in the L7 tester. This
// module is browser compatible (it needs a DOM).

import { queryName } from "../../policy-wasm/mod.ts";
import { fill, h } from "./dom.ts";
import { sourceLinks, tracePre, verdictPill } from "./explanation.ts";
import type { ScenarioQuery } from "./model.ts";
import type { FlowOutcome, QueryRow, SourceSpan } from "./simulation.ts";

export interface QueriesEvents {
  onRemove(index: number): void;
  onOpenL7(q: ScenarioQuery): void;
  /** A result was opened: highlight what decided it. */
  onSelect(outcome: FlowOutcome): void;
  onShowSource(span: SourceSpan): void;
}

export class QueriesView {
  #el: HTMLElement;
  #badge: HTMLElement;
  #events: QueriesEvents;
  #open = new Set<number>();

  constructor(el: HTMLElement, badge: HTMLElement, events: QueriesEvents) {
    this.#el = el;
    this.#badge = badge;
    this.#events = events;
  }

  /** Clears which rows are expanded (a new scenario). */
  reset(): void {
    this.#open.clear();
  }

  render(rows: QueryRow[] | undefined, message?: string): void {
    if (!rows) {
      this.#badge.textContent = "";
      this.#badge.className = "badge";
      fill(this.#el, h("p", { class: "empty" }, message ?? ""));
      return;
    }
    const failed = rows.filter((r) => r.pass === false || r.error).length;
    const passed = rows.filter((r) => r.pass === true).length;
    this.#badge.textContent = rows.length === 0
      ? ""
      : failed > 0
      ? `${failed} failing`
      : `${passed}/${rows.length}`;
    this.#badge.className = `badge ${failed > 0 ? "bad" : rows.length > 0 ? "good" : ""}`;
    if (rows.length === 0) {
      fill(
        this.#el,
        h(
          "p",
          { class: "empty" },
          "No queries yet. Use “Add as query” on a matrix cell or in the L7 request tab.",
        ),
      );
      return;
    }
    const body = h("tbody", {});
    for (const r of rows) {
      body.append(this.#row(r));
      if (this.#open.has(r.index)) body.append(this.#detail(r));
    }
    fill(
      this.#el,
      h(
        "p",
        { class: `summary ${failed > 0 ? "bad" : "good"}`, "data-testid": "queries-summary" },
        `${rows.length} ${rows.length === 1 ? "query" : "queries"} · ${passed} as expected`,
        failed > 0 ? ` · ${failed} not as expected` : "",
      ),
      h(
        "table",
        { class: "queries" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", {}),
            h("th", {}, "Query"),
            h("th", {}, "Expected"),
            h("th", {}, "Verdict"),
            h("th", {}),
          ),
        ),
        body,
      ),
    );
  }

  #row(r: QueryRow): HTMLElement {
    const status = r.error
      ? "error"
      : r.pass === true
      ? "pass"
      : r.pass === false
      ? "fail"
      : "none";
    const icon = { pass: "✓", fail: "✗", error: "!", none: "·" }[status];
    const q = r.query;
    const l7 = q.http ? `${q.http.method} ${q.http.path}` : q.kafka ? kafkaText(q) : "";
    const toggle = () => {
      if (!this.#open.delete(r.index)) {
        this.#open.add(r.index);
        if (r.outcome) this.#events.onSelect(r.outcome);
      }
      const next = row.nextElementSibling as HTMLElement | null;
      if (next?.classList.contains("query-detail")) next.remove();
      else row.after(this.#detail(r));
      row.classList.toggle("open", this.#open.has(r.index));
      row.setAttribute("aria-expanded", String(this.#open.has(r.index)));
    };
    const row = h(
      "tr",
      {
        class: `query-row ${status}${this.#open.has(r.index) ? " open" : ""}`,
        "data-testid": "query-result",
        "data-index": r.index,
        "data-verdict": r.outcome?.verdict ?? "error",
        "data-pass": r.pass === undefined ? "" : String(r.pass),
        title: "Show the explanation",
        tabindex: 0,
        "aria-expanded": String(this.#open.has(r.index)),
        onclick: toggle,
        onkeydown: (e: Event) => {
          const key = (e as KeyboardEvent).key;
          if (e.target === row && (key === "Enter" || key === " ")) {
            e.preventDefault();
            toggle();
          }
        },
      },
      h("td", { class: `status ${status}` }, icon),
      h(
        "td",
        { class: "query-name" },
        h("div", {}, r.name),
        h(
          "div",
          { class: "sub" },
          queryName(q, r.outcome),
          l7 ? h("code", {}, l7) : null,
        ),
      ),
      h("td", {}, r.expect ? h("span", { class: `expect ${r.expect}` }, r.expect) : "–"),
      h("td", {}, r.outcome ? verdictPill(r.outcome) : h("span", { class: "pill error" }, "error")),
      h(
        "td",
        { class: "actions" },
        q.http || q.kafka
          ? h("button", {
            type: "button",
            class: "icon",
            title: "Open in the L7 tester",
            onclick: (e: Event) => {
              e.stopPropagation();
              this.#events.onOpenL7(q);
            },
          }, "↗")
          : null,
        h("button", {
          type: "button",
          class: "icon remove",
          title: "Remove query",
          onclick: (e: Event) => {
            e.stopPropagation();
            this.#open.clear();
            this.#events.onRemove(r.index);
          },
        }, "×"),
      ),
    );
    return row;
  }

  #detail(r: QueryRow): HTMLElement {
    return h(
      "tr",
      { class: "query-detail" },
      h(
        "td",
        { colspan: 5 },
        r.error ? h("p", { class: "error-text" }, r.error) : h(
          "div",
          {},
          h("p", { class: "reason" }, r.outcome!.reason),
          sourceLinks(r.outcome!.sources, (s) => this.#events.onShowSource(s)),
          tracePre(r.outcome!.trace),
        ),
      ),
    );
  }
}

function kafkaText(q: ScenarioQuery): string {
  const k = q.kafka!;
  const topics = [...(k.topics ?? []), ...(k.topic ? [k.topic] : [])];
  return `Kafka ${k.apiKey}${topics.length ? " " + topics.join(",") : ""}`;
}
