// Renders a flow's outcome: the verdict, the one-line reason and the decision chain exactly as
// explainFlow() words it (the lines `cilia policy trace` prints), lightly coloured. This module
// is browser compatible (it needs a DOM).

import { type Child, h } from "./dom.ts";
import type { FlowOutcome } from "./simulation.ts";

export function verdictPill(outcome: Pick<FlowOutcome, "verdict" | "l7">): HTMLElement {
  return h(
    "span",
    { class: `pill ${outcome.verdict}`, "data-verdict": outcome.verdict },
    outcome.verdict === "allowed"
      ? "✓ allowed"
      : outcome.verdict === "audited"
      ? "✓ audited (audit mode would deny)"
      : "✗ denied",
    outcome.l7 ? h("span", { class: "tag l7", title: "L7 rules apply" }, "L7") : null,
  );
}

function lineClass(line: string): string {
  if (line.startsWith("Final verdict")) return "final";
  if (/^\s+=> DENIED/.test(line)) return "deny";
  if (/^\s+=> ALLOWED/.test(line)) return "allow";
  if (!line.startsWith(" ")) return "head";
  return "";
}

/** The trace as a <pre>; its text is the trace lines joined by newlines. */
export function tracePre(trace: readonly string[]): HTMLElement {
  const children: Child[] = [];
  trace.forEach((line, i) => {
    if (i > 0) children.push("\n");
    children.push(h("span", { class: lineClass(line) }, line));
  });
  return h("pre", { class: "trace", "data-testid": "trace" }, ...children);
}

export function explanation(
  title: string,
  outcome: FlowOutcome,
  actions: Child[] = [],
): HTMLElement {
  return h(
    "div",
    { class: "explanation", "data-testid": "explanation", "data-verdict": outcome.verdict },
    h(
      "div",
      { class: "explanation-head" },
      verdictPill(outcome),
      h("strong", { class: "flow-title" }, title),
      h("span", { class: "spacer" }),
      ...actions,
    ),
    h("p", { class: "reason" }, outcome.reason),
    outcome.l7
      ? h(
        "p",
        { class: "hint" },
        "L7 rules apply to this flow and no request was given, so only L3/L4 was judged. Try a request in the L7 request tab.",
      )
      : null,
    tracePre(outcome.trace),
  );
}
