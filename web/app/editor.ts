// The policy editor as the app sees it. The page becomes interactive with a plain text area
// (monospace, editable, same keyboard behaviour: Tab moves on), and CodeMirror 6
// (codemirror_editor.ts, a chunk of its own, requested at once by main.ts) replaces it as soon
// as it arrives, taking over the text, selection, focus, diagnostics and highlights. This keeps
// CodeMirror's ~130 KiB (gzip) off the critical path of the first load. It shows what it is
// given; it does not validate by itself. This module is browser compatible (it needs a DOM).

import type { Diagnostic } from "./simulation.ts";

export interface PolicyEditor {
  text(): string;
  /** Replaces the text without reporting a change. */
  setText(text: string): void;
  showDiagnostics(list: readonly Diagnostic[]): void;
  goTo(line: number, column?: number): void;
  /** Opt in to Tab inserting two spaces (off: Tab moves focus). */
  setTabIndents(on: boolean): void;
  /** Read-only (live mode shows the cluster's policies until the user forks a draft). */
  setReadOnly(on: boolean): void;
  /** Marks whole lines (1-based, inclusive) and scrolls the first into view; [] clears. */
  highlight(spans: readonly { line: number; endLine: number }[]): void;
  focus(): void;
  destroy(): void;
}

type Span = { line: number; endLine: number };
type Factory = (parent: HTMLElement, onChange: (text: string) => void) => PolicyEditor;

/** The CodeMirror chunk, requested once (main.ts starts it before the engine loads). */
let codemirror: Promise<Factory> | undefined;
export function loadCodeMirror(): Promise<Factory> {
  return codemirror ??= import("./codemirror_editor.ts").then((m) => m.createCodeMirrorEditor);
}

/** A <textarea> stand-in until CodeMirror is loaded. */
function plainEditor(parent: HTMLElement, onChange: (text: string) => void): PolicyEditor & {
  area: HTMLTextAreaElement;
} {
  const area = document.createElement("textarea");
  area.className = "editor-plain";
  area.spellcheck = false;
  area.setAttribute("aria-label", "Policies (YAML)");
  area.addEventListener("input", () => onChange(area.value));
  let tabs = false;
  area.addEventListener("keydown", (e) => {
    if (!tabs || e.key !== "Tab" || e.shiftKey) return;
    e.preventDefault();
    area.setRangeText("  ", area.selectionStart, area.selectionEnd, "end");
    onChange(area.value);
  });
  parent.append(area);
  const offset = (line: number, column: number) => {
    const lines = area.value.split("\n");
    const l = Math.min(Math.max(line, 1), lines.length);
    let at = 0;
    for (let i = 0; i < l - 1; i++) at += lines[i]!.length + 1;
    return at + Math.min(Math.max(column - 1, 0), lines[l - 1]!.length);
  };
  return {
    area,
    text: () => area.value,
    setText: (text) => void (area.value = text),
    showDiagnostics: () => {},
    goTo(line, column = 1) {
      const at = offset(line, column);
      area.setSelectionRange(at, at);
      area.focus();
    },
    setTabIndents: (on) => void (tabs = on),
    setReadOnly: (on) => void (area.readOnly = on),
    highlight: () => {},
    focus: () => area.focus(),
    destroy: () => area.remove(),
  };
}

export function createPolicyEditor(
  parent: HTMLElement,
  onChange: (text: string) => void,
): PolicyEditor {
  let diagnostics: readonly Diagnostic[] = [];
  let spans: readonly Span[] = [];
  let tabs = false;
  let readOnly = false;
  const changed = (text: string) => {
    delete parent.dataset.highlight;
    onChange(text);
  };
  const plain = plainEditor(parent, changed);
  let current: PolicyEditor = plain;
  parent.dataset.editor = "plain";
  loadCodeMirror().then((create) => {
    const focused = document.activeElement === plain.area;
    const { selectionStart, selectionEnd, value } = plain.area;
    plain.destroy();
    const cm = create(parent, changed) as PolicyEditor & {
      view: import("@codemirror/view").EditorView;
    };
    cm.setText(value);
    cm.setTabIndents(tabs);
    cm.setReadOnly(readOnly);
    cm.showDiagnostics(diagnostics);
    if (spans.length > 0) cm.highlight(spans);
    cm.view.dispatch({ selection: { anchor: selectionStart, head: selectionEnd } });
    if (focused) cm.focus();
    current = cm;
    parent.dataset.editor = "codemirror";
  }).catch((e) => {
    // The text area stays: the simulator works without highlighting.
    parent.dataset.editor = "plain-only";
    console.warn("CodeMirror could not load; keeping the plain editor", e);
  });
  return {
    text: () => current.text(),
    setText(text) {
      delete parent.dataset.highlight;
      spans = [];
      current.setText(text);
    },
    showDiagnostics(list) {
      diagnostics = list;
      current.showDiagnostics(list);
    },
    goTo: (line, column) => current.goTo(line, column),
    setTabIndents(on) {
      tabs = on;
      current.setTabIndents(on);
    },
    setReadOnly(on) {
      readOnly = on;
      current.setReadOnly(on);
    },
    highlight(list) {
      spans = list;
      parent.dataset.highlight = list.map((s) => `${s.line}-${s.endLine}`).join(",");
      current.highlight(list);
    },
    focus: () => current.focus(),
    destroy: () => current.destroy(),
  };
}
