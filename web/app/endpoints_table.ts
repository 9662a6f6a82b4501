// The endpoint table: name, namespace, labels (`k=v,k2=v2`), IP and the identity the simulated
// cluster gave each endpoint; rows can be added and removed. It edits the workspace's endpoint
// rows in place and reports each change. This module is browser compatible (it needs a DOM).

import { parseAddress } from "../../policy-wasm/mod.ts";
import { fill, h } from "./dom.ts";
import { type EndpointRow, formatLabels, freshEndpoint, parseLabels } from "./model.ts";

export interface EndpointsTableEvents {
  /** A field changed ("edit") or a row was added or removed ("rows"). */
  onChange(kind: "edit" | "rows"): void;
}

export class EndpointsTable {
  #el: HTMLElement;
  #events: EndpointsTableEvents;
  #rows: EndpointRow[] = [];
  #identityCells: HTMLElement[] = [];

  constructor(el: HTMLElement, events: EndpointsTableEvents) {
    this.#el = el;
    this.#events = events;
  }

  /** Shows `rows` (the workspace's array, edited in place). */
  render(rows: EndpointRow[]): void {
    this.#rows = rows;
    this.#identityCells = [];
    const body = h("tbody", {});
    rows.forEach((row, i) => body.append(this.#row(row, i)));
    fill(
      this.#el,
      h(
        "table",
        { class: "endpoints", "data-testid": "endpoints" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { class: "w-name" }, "Name"),
            h("th", { class: "w-ns" }, "Namespace"),
            h("th", { class: "w-labels" }, "Labels"),
            h("th", { class: "w-ip" }, "IP"),
            h("th", { class: "num w-id", title: "Security identity" }, "Identity"),
            h("th", { class: "w-actions" }),
          ),
        ),
        body,
      ),
      rows.length === 0 ? h("p", { class: "empty" }, "No endpoints yet.") : null,
    );
  }

  add(): void {
    this.#rows.push(freshEndpoint(this.#rows));
    this.render(this.#rows);
    this.#events.onChange("rows");
    const inputs = this.#el.querySelectorAll<HTMLInputElement>("tbody tr:last-child input");
    inputs[0]?.select();
  }

  setIdentities(ids: readonly number[]): void {
    this.#identityCells.forEach((c, i) =>
      c.textContent = ids[i] !== undefined ? String(ids[i]) : "–"
    );
  }

  #row(row: EndpointRow, index: number): HTMLElement {
    const edit = (apply: (value: string, input: HTMLInputElement) => boolean) => (e: Event) => {
      const input = e.target as HTMLInputElement;
      const ok = apply(input.value, input);
      input.classList.toggle("invalid", !ok);
      if (ok) {
        input.removeAttribute("title");
        this.#events.onChange("edit");
      }
    };
    const identity = h("td", { class: "num identity" }, "–");
    this.#identityCells.push(identity);
    return h(
      "tr",
      { "data-testid": "endpoint-row", "data-name": row.name },
      h(
        "td",
        {},
        h("input", {
          value: row.name,
          "aria-label": "Name",
          "data-field": "name",
          spellcheck: "false",
          oninput: edit((v, input) => {
            row.name = v.trim();
            input.closest("tr")?.setAttribute("data-name", row.name);
            return row.name !== "";
          }),
        }),
      ),
      h(
        "td",
        {},
        h("input", {
          value: row.namespace ?? "default",
          "aria-label": "Namespace",
          "data-field": "namespace",
          spellcheck: "false",
          oninput: edit((v) => {
            row.namespace = v.trim() || "default";
            return true;
          }),
        }),
      ),
      h(
        "td",
        { class: "labels" },
        h("input", {
          value: formatLabels(row.labels),
          "aria-label": "Labels",
          "data-field": "labels",
          placeholder: "app=web,tier=frontend",
          spellcheck: "false",
          oninput: edit((v, input) => {
            const r = parseLabels(v);
            if ("error" in r) {
              input.title = r.error;
              return false;
            }
            row.labels = r.labels;
            return true;
          }),
        }),
      ),
      h(
        "td",
        { class: "ip" },
        h("input", {
          value: row.ip ?? "",
          "aria-label": "IP",
          "data-field": "ip",
          placeholder: "10.0.0.1",
          spellcheck: "false",
          oninput: edit((v, input) => {
            const ip = v.trim();
            if (ip !== "" && !parseAddress(ip)) {
              input.title = `Invalid IP "${ip}": expected an IPv4 or IPv6 address`;
              return false;
            }
            if (ip === "") delete row.ip;
            else row.ip = ip;
            return true;
          }),
        }),
      ),
      identity,
      h(
        "td",
        { class: "actions" },
        h("button", {
          type: "button",
          class: "icon remove",
          title: "Remove endpoint",
          "aria-label": `Remove ${row.name}`,
          onclick: () => {
            this.#rows.splice(index, 1);
            this.render(this.#rows);
            this.#events.onChange("rows");
          },
        }, "×"),
      ),
    );
  }
}
