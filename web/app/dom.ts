// A tiny element builder for the simulator's plain-DOM views: h("button", {class: "x", onclick},
// "text"). Attributes are set as attributes, `on*` functions become listeners, `value` and
// `checked` are set as properties. This module is browser compatible (it needs a DOM).

export type Child = Node | string | number | null | undefined | false;

export type Props = Record<
  string,
  string | number | boolean | null | undefined | ((e: Event) => void)
>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value" || k === "checked") (el as unknown as Record<string, unknown>)[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

export function append(el: Element, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === "number" ? String(c) : c);
  }
}

/** Replaces an element's children. */
export function fill(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`Missing element "#${id}" in index.html`);
  return el as T;
}

/** Text with `code` spans (backticks) as <code> elements. */
export function richText(text: string): Child[] {
  return text.split(/(`[^`]+`)/).map((part) =>
    part.startsWith("`") && part.endsWith("`") && part.length > 1
      ? h("code", {}, part.slice(1, -1))
      : part
  );
}

/** Calls `fn` once `ms` after the last call. */
export function debounce<A extends unknown[]>(
  fn: (...args: A) => void,
  ms: number,
): ((...args: A) => void) & { flush(): void; cancel(): void } {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let last: A | undefined;
  const call = (...args: A) => {
    last = args;
    clearTimeout(timer);
    timer = setTimeout(run, ms);
  };
  const run = () => {
    timer = undefined;
    if (last) fn(...last);
    last = undefined;
  };
  return Object.assign(call, {
    flush: () => {
      if (timer !== undefined) {
        clearTimeout(timer);
        run();
      }
    },
    cancel: () => {
      clearTimeout(timer);
      timer = undefined;
      last = undefined;
    },
  });
}
