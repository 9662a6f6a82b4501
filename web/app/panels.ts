// Small views of the simulator: the scenario notes (name and description, which is how tutorials
// explain themselves), the problems list under the editor, the tabs, and the toast. This module
// is browser compatible (it needs a DOM).

import { fill, h, richText } from "./dom.ts";
import type { Diagnostic, RunResult } from "./simulation.ts";

export function renderNotes(
  el: HTMLElement,
  o: { name?: string | undefined; description?: string | undefined; tutorial: boolean },
): void {
  el.hidden = !o.description;
  if (!o.description) return fill(el);
  fill(
    el,
    h(
      "header",
      { class: "notes-head" },
      o.tutorial ? h("span", { class: "tag tutorial" }, "Tutorial") : null,
      h("h2", {}, o.name ?? "Scenario"),
      h("span", { class: "spacer" }),
      h("button", {
        type: "button",
        class: "icon",
        title: "Hide",
        "aria-label": "Hide the notes",
        onclick: () => el.hidden = true,
      }, "×"),
    ),
    ...o.description.split(/\n\s*\n/).map((p) => h("p", {}, ...richText(p.trim()))),
  );
}

export function renderProblems(
  list: HTMLElement,
  status: HTMLElement,
  r: RunResult,
  goTo: (d: Diagnostic) => void,
): void {
  const warnings = r.diagnostics.length - r.errors;
  status.className = `status ${r.errors > 0 ? "bad" : warnings > 0 ? "warn" : "good"}`;
  status.textContent = r.errors > 0
    ? `✗ ${r.errors} ${r.errors === 1 ? "error" : "errors"}`
    : `✓ ${r.policies} ${r.policies === 1 ? "policy" : "policies"} valid` +
      (warnings > 0 ? ` · ${warnings} ${warnings === 1 ? "warning" : "warnings"}` : "");
  list.hidden = r.diagnostics.length === 0;
  fill(
    list,
    ...r.diagnostics.map((d) =>
      h(
        "li",
        {
          class: `problem ${d.severity}`,
          "data-testid": "problem",
          "data-severity": d.severity,
          "data-line": d.line ?? "",
          title: d.line !== undefined ? "Go to the line" : undefined,
          tabindex: 0,
          role: "button",
          onclick: () => goTo(d),
          onkeydown: (e: Event) => {
            const key = (e as KeyboardEvent).key;
            if (key === "Enter" || key === " ") {
              e.preventDefault();
              goTo(d);
            }
          },
        },
        h("span", { class: "icon" }, d.severity === "error" ? "✗" : "!"),
        d.line !== undefined ? h("span", { class: "where" }, `Line ${d.line}`) : null,
        h("span", { class: "message" }, d.message),
        d.path ? h("code", { class: "path" }, d.path) : null,
      )
    ),
  );
}

export type TabName = "matrix" | "l7" | "queries" | "live";

/** Wires the tab buttons (`data-tab`) to the panels `#tab-<name>`. */
export function initTabs(nav: HTMLElement): { select(name: TabName): void } {
  const buttons = [...nav.querySelectorAll<HTMLButtonElement>("[data-tab]")];
  const select = (name: TabName) => {
    for (const b of buttons) {
      const on = b.dataset.tab === name;
      b.setAttribute("aria-selected", String(on));
      document.getElementById(`tab-${b.dataset.tab}`)!.hidden = !on;
    }
  };
  for (const b of buttons) b.addEventListener("click", () => select(b.dataset.tab as TabName));
  return { select };
}

let toastTimer: ReturnType<typeof setTimeout> | undefined;

export function toast(message: string, kind: "info" | "error" = "info"): void {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = message;
  el.className = `toast ${kind}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.hidden = true, kind === "error" ? 8000 : 2500);
}
