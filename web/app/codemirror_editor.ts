// The policy editor's CodeMirror 6 implementation, loaded as its own chunk (editor.ts swaps it in
// for the plain text area as soon as it arrives): YAML highlighting, a lint gutter and the engine's
// diagnostics (validation errors, compile and lint warnings) placed at their line and column.
// It shows what it is given; it does not validate by itself. Keyboard: Tab moves focus on, as in
// CodeMirror's accessible default; indenting with Tab is an opt-in (`setTabIndents`), and even
// then Esc followed by Tab leaves the editor. `highlight()` marks the lines of the rule that
// decided a selected verdict (until the text changes). This module is browser compatible.

import { basicSetup, EditorView } from "codemirror";
import { yaml } from "@codemirror/lang-yaml";
import { type Diagnostic as CmDiagnostic, lintGutter, setDiagnostics } from "@codemirror/lint";
import { Compartment, EditorState, StateEffect, StateField, type Text } from "@codemirror/state";
import { Decoration, type DecorationSet, keymap } from "@codemirror/view";
import type { Diagnostic } from "./simulation.ts";
import type { PolicyEditor } from "./editor.ts";

const setHighlight = StateEffect.define<readonly { line: number; endLine: number }[]>();
const decidedLine = Decoration.line({ class: "cm-decided" });

/** The highlighted lines; cleared by any edit (they would no longer be what decided). */
const highlightField = StateField.define<DecorationSet>({
  create: () => Decoration.none,
  update(deco, tr) {
    if (tr.docChanged) deco = Decoration.none;
    for (const e of tr.effects) {
      if (!e.is(setHighlight)) continue;
      const doc = tr.state.doc;
      const starts = new Set<number>();
      for (const s of e.value) {
        const last = Math.min(s.endLine, doc.lines);
        for (let l = Math.max(1, s.line); l <= last; l++) starts.add(doc.line(l).from);
      }
      deco = Decoration.set([...starts].sort((a, b) => a - b).map((p) => decidedLine.range(p)));
    }
    return deco;
  },
  provide: (f) => EditorView.decorations.from(f),
});

const theme = EditorView.theme({
  "&": { height: "100%", fontSize: "13px", backgroundColor: "#fff" },
  "&.cm-focused": { outline: "none" },
  ".cm-scroller": {
    fontFamily: "ui-monospace, 'SFMono-Regular', 'DejaVu Sans Mono', Menlo, Consolas, monospace",
    lineHeight: "1.55",
  },
  // #5c6675 on #f7f8fa: 5.6:1 (WCAG AA for small text).
  ".cm-gutters": { backgroundColor: "#f7f8fa", borderRight: "1px solid #e3e6ea", color: "#5c6675" },
  ".cm-activeLineGutter": { backgroundColor: "#eef1f5" },
  ".cm-activeLine": { backgroundColor: "#f5f8ff" },
  ".cm-line.cm-decided": { backgroundColor: "#fff3c4", boxShadow: "inset 3px 0 0 #e0a800" },
});

/** Tab indents by two spaces (YAML has no tabs), when the user opted in; Shift-Tab is left to the
 * browser. */
const tabIndent = keymap.of([{
  key: "Tab",
  run: (view) => {
    view.dispatch(view.state.replaceSelection("  "), { scrollIntoView: true, userEvent: "input" });
    return true;
  },
}]);

export function createCodeMirrorEditor(
  parent: HTMLElement,
  onChange: (text: string) => void,
): PolicyEditor & { readonly view: EditorView } {
  let silent = false;
  const tabs = new Compartment();
  const readOnly = new Compartment();
  const view = new EditorView({
    parent,
    extensions: [
      basicSetup,
      yaml(),
      lintGutter(),
      highlightField,
      tabs.of([]),
      readOnly.of([]),
      theme,
      EditorView.contentAttributes.of({ "aria-label": "Policies (YAML)" }),
      EditorView.updateListener.of((u) => {
        if (u.docChanged && !silent) onChange(u.state.doc.toString());
      }),
    ],
  });
  return {
    view,
    text: () => view.state.doc.toString(),
    focus: () => view.focus(),
    destroy: () => view.destroy(),
    setText(text) {
      silent = true;
      try {
        view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
      } finally {
        silent = false;
      }
    },
    showDiagnostics(list) {
      const doc = view.state.doc;
      view.dispatch(setDiagnostics(view.state, list.map((d) => toCm(doc, d))));
    },
    setTabIndents(on) {
      view.dispatch({ effects: tabs.reconfigure(on ? tabIndent : []) });
    },
    setReadOnly(on) {
      view.dispatch({
        effects: readOnly.reconfigure(
          on ? [EditorState.readOnly.of(true), EditorView.editable.of(false)] : [],
        ),
      });
    },
    highlight(spans) {
      const first = spans[0];
      view.dispatch({
        effects: [
          setHighlight.of(spans),
          ...(first
            ? [EditorView.scrollIntoView(position(view.state.doc, first.line, 1), { y: "center" })]
            : []),
        ],
      });
    },
    goTo(line, column = 1) {
      const pos = position(view.state.doc, line, column);
      view.dispatch({ selection: { anchor: pos }, scrollIntoView: true });
      view.focus();
    },
  };
}

function position(doc: Text, line: number, column: number): number {
  const l = doc.line(Math.min(Math.max(line, 1), doc.lines));
  return l.from + Math.min(Math.max(column - 1, 0), l.length);
}

function toCm(doc: Text, d: Diagnostic): CmDiagnostic {
  const from = position(doc, d.line ?? 1, d.column ?? 1);
  const line = doc.lineAt(from);
  const end = line.from + line.text.trimEnd().length;
  return {
    from,
    to: Math.max(from, end),
    severity: d.severity,
    message: d.path ? `${d.message} (at ${d.path})` : d.message,
    source: d.severity === "error" ? "cilia validate" : "cilia lint",
  };
}
