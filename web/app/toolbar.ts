// The top bar: scenario name, "New", tutorial selector, import (file picker), export (download) and the
// share link (copied to the clipboard and shown for manual copying). It reports what the user
// asked for; the app decides what it means. This module is browser compatible (it needs a DOM).

import { byId, fill, h } from "./dom.ts";
import type { Tutorial } from "../tutorials.ts";

export interface ToolbarEvents {
  /** "New": an empty scenario (no name, notes, policies, endpoints or queries). */
  onNew(): void;
  onRename(name: string): void;
  onTutorial(id: string): void;
  onImport(text: string, fileName: string): void;
  /** The file to download. */
  exportFile(): { text: string; fileName: string };
  shareUrl(): string;
}

export class Toolbar {
  #name = byId<HTMLInputElement>("scenario-name");
  #tutorials = byId<HTMLSelectElement>("tutorial-select");

  constructor(
    groups: { label: string; tutorials: readonly Tutorial[] }[],
    events: ToolbarEvents,
  ) {
    fill(
      this.#tutorials,
      h("option", { value: "" }, "Choose…"),
      ...groups.map((g) =>
        h(
          "optgroup",
          { label: g.label },
          ...g.tutorials.map((t) => h("option", { value: t.id }, t.title)),
        )
      ),
    );
    this.#name.addEventListener("input", () => events.onRename(this.#name.value));
    this.#tutorials.addEventListener("change", () => {
      if (this.#tutorials.value) events.onTutorial(this.#tutorials.value);
    });
    byId("new-button").addEventListener("click", () => events.onNew());
    const file = byId<HTMLInputElement>("import-file");
    byId("import-button").addEventListener("click", () => file.click());
    file.addEventListener("change", async () => {
      const f = file.files?.[0];
      if (!f) return;
      events.onImport(await f.text(), f.name);
      file.value = "";
    });
    byId("export-button").addEventListener("click", () => download(events.exportFile()));
    this.#initShare(events);
  }

  setName(name: string | undefined): void {
    this.#name.value = name ?? "";
  }

  setTutorial(id: string | undefined): void {
    this.#tutorials.value = id ?? "";
  }

  #initShare(events: ToolbarEvents): void {
    const popover = byId("share-popover");
    const link = byId<HTMLInputElement>("share-link");
    const note = byId("share-note");
    byId("copy-link").addEventListener("click", async (e) => {
      e.stopPropagation();
      link.value = events.shareUrl();
      popover.hidden = false;
      link.select();
      note.textContent = "Anyone with this link sees this scenario and its verdicts.";
      try {
        await navigator.clipboard.writeText(link.value);
        note.textContent = "Copied to the clipboard. " + note.textContent;
      } catch {
        note.textContent = "Press Ctrl+C to copy. " + note.textContent;
      }
    });
    document.addEventListener("click", (e) => {
      if (!popover.contains(e.target as Node)) popover.hidden = true;
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape") popover.hidden = true;
    });
  }
}

function download(f: { text: string; fileName: string }): void {
  const url = URL.createObjectURL(new Blob([f.text], { type: "text/yaml" }));
  const a = h("a", { href: url, download: f.fileName, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
