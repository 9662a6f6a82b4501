// Renders a flow's outcome: the verdict, the one-line reason and the decision chain exactly as
// explainFlow() words it (the lines `cilia policy trace` prints), lightly coloured. This module
// is browser compatible (it needs a DOM).

import { type Child, h } from "./dom.ts";
import type { FlowOutcome, SourceSpan } from "./simulation.ts";

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
  sources: Child = null,
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
    sources,
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

/**
 * "Decided by" with a button per rule (or default-deny policy) that highlights its lines in the
 * editor; nothing when no policy decided (default allow, allow-localhost, loopback).
 */
export function sourceLinks(
  sources: readonly SourceSpan[],
  onShow: (s: SourceSpan) => void,
): HTMLElement | null {
  if (sources.length === 0) return null;
  return h(
    "p",
    { class: "sources", "data-testid": "sources" },
    h("span", { class: "muted" }, "Decided by "),
    ...sources.map((s) =>
      h("button", {
        type: "button",
        class: "link",
        "data-testid": "source-link",
        "data-line": s.line,
        title: "Highlight these lines in the editor",
        onclick: () => onShow(s),
      }, `${s.label} (${s.direction}, ${linesText(s)})`)
    ),
  );
}

function linesText(s: SourceSpan): string {
  return s.endLine > s.line ? `lines ${s.line}–${s.endLine}` : `line ${s.line}`;
}
