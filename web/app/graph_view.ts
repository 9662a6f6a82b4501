// The picture of the policy: who may talk to whom, as an SVG graph. Nodes are the matrix's peers
// (endpoints, CIDRs, world, host) on a circle; a directed edge per judged pair, coloured by the
// engine's verdict (allowed, audited; denied on request), L7 edges marked. Edges are buttons: a
// click or Enter selects that flow, as a matrix cell does. `compact` (phones) draws smaller boxes
// with two-line CIDR labels, so that the picture keeps its text size on a narrow screen. No layout
// library. This module is browser compatible (it needs a DOM).

import type { MatrixCell } from "./simulation.ts";
import type { MatrixPeer } from "./peers.ts";

const SVG = "http://www.w3.org/2000/svg";

interface Box {
  w: number;
  h: number;
  /** Longest label on one line. */
  chars: number;
}
const WIDE: Box = { w: 132, h: 34, chars: 17 };
const COMPACT: Box = { w: 106, h: 40, chars: 13 };

export interface GraphOptions {
  peers: readonly MatrixPeer[];
  cells: readonly (readonly MatrixCell[])[];
  showDenied: boolean;
  compact: boolean;
  selected?: { from: string; to: string } | undefined;
  onSelect(cell: MatrixCell): void;
}

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number>,
  ...children: (SVGElement | string)[]
): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c);
  return el;
}

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** A node's label: one line, or a long prefix as address and length on two lines. */
function label(name: string, box: Box): SVGTextElement {
  const slash = name.lastIndexOf("/");
  if (name.length <= box.chars || slash < 0) {
    return svg("text", { "text-anchor": "middle", dy: "0.35em" }, clip(name, box.chars));
  }
  return svg(
    "text",
    { "text-anchor": "middle" },
    svg("tspan", { x: 0, dy: "-0.2em" }, clip(name.slice(0, slash), box.chars)),
    svg("tspan", { x: 0, dy: "1.15em" }, name.slice(slash)),
  );
}

/** Where an edge leaves a node's box, from its centre towards (dx, dy). */
function border(dx: number, dy: number, box: Box): number {
  const len = Math.hypot(dx, dy) || 1;
  const ux = Math.abs(dx / len);
  const uy = Math.abs(dy / len);
  return Math.min(
    ux > 0 ? (box.w / 2 + 6) / ux : Infinity,
    uy > 0 ? (box.h / 2 + 6) / uy : Infinity,
  );
}

function edgeClass(c: MatrixCell): string {
  return `edge ${c.verdict}${c.l7 ? " l7" : ""}`;
}

export function renderGraph(o: GraphOptions): SVGSVGElement {
  const n = o.peers.length;
  const box = o.compact ? COMPACT : WIDE;
  // Radius so that neighbouring boxes do not touch.
  const r = Math.max(o.compact ? 110 : 150, (n * (box.w + 20)) / (2 * Math.PI));
  const w = 2 * r + box.w + 20;
  const h = 2 * r + box.h + 40;
  const cx = w / 2;
  const cy = h / 2;
  const at = o.peers.map((_, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
    return { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) };
  });
  const root = svg("svg", {
    viewBox: `0 0 ${Math.round(w)} ${Math.round(h)}`,
    class: "graph",
    role: "group",
    "aria-label": "Who may talk to whom",
    "data-testid": "graph",
    "data-compact": String(o.compact),
  });
  const defs = svg("defs", {});
  for (const v of ["allowed", "l7", "denied", "audited"]) {
    defs.append(
      svg(
        "marker",
        {
          id: `arrow-${v}`,
          viewBox: "0 0 10 10",
          refX: 9,
          refY: 5,
          // A fixed size: a selected (thicker) edge keeps the same arrowhead.
          markerUnits: "userSpaceOnUse",
          markerWidth: 11,
          markerHeight: 11,
          orient: "auto-start-reverse",
        },
        svg("path", { d: "M0,0 L10,5 L0,10 z", class: `arrow ${v}` }),
      ),
    );
  }
  root.append(defs);
  const edges = svg("g", { class: "edges" });
  o.cells.forEach((row, i) =>
    row.forEach((c, j) => {
      if (i === j || c.na || (c.verdict === "denied" && !o.showDenied)) return;
      edges.append(edge(c, [at[i]!, at[j]!], box, o));
    })
  );
  root.append(edges);
  const nodes = svg("g", { class: "nodes" });
  o.peers.forEach((p, i) => {
    const { x, y } = at[i]!;
    nodes.append(
      svg(
        "g",
        {
          class: `node ${p.kind}`,
          "data-testid": "graph-node",
          "data-name": p.name,
          transform: `translate(${x.toFixed(1)},${y.toFixed(1)})`,
        },
        svg("title", {}, p.title ? `${p.name} (${p.title})` : p.name),
        svg("rect", {
          x: -box.w / 2,
          y: -box.h / 2,
          width: box.w,
          height: box.h,
          rx: p.kind === "endpoint" ? 8 : box.h / 2,
        }),
        label(p.name, box),
      ),
    );
  });
  root.append(nodes);
  return root;
}

function edge(
  c: MatrixCell,
  [a, b]: [{ x: number; y: number }, { x: number; y: number }],
  box: Box,
  o: GraphOptions,
): SVGGElement {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const len = Math.hypot(dx, dy) || 1;
  // Bend to the right of the direction of travel, so A→B and B→A do not overlap.
  const bend = Math.min(36, len / 5);
  const mx = (a.x + b.x) / 2 - (dy / len) * bend;
  const my = (a.y + b.y) / 2 + (dx / len) * bend;
  const s = border(mx - a.x, my - a.y, box) / Math.hypot(mx - a.x, my - a.y);
  const e = border(mx - b.x, my - b.y, box) / Math.hypot(mx - b.x, my - b.y);
  const x1 = a.x + (mx - a.x) * s;
  const y1 = a.y + (my - a.y) * s;
  const x2 = b.x + (mx - b.x) * e;
  const y2 = b.y + (my - b.y) * e;
  const d = `M${x1.toFixed(1)},${y1.toFixed(1)} Q${mx.toFixed(1)},${my.toFixed(1)} ${
    x2.toFixed(1)
  },${y2.toFixed(1)}`;
  const selected = o.selected?.from === c.from && o.selected.to === c.to;
  const label = `${c.from} → ${c.to}: ${c.verdict}${c.l7 ? ", L7 rules apply" : ""}`;
  const g = svg(
    "g",
    {
      class: `${edgeClass(c)}${selected ? " selected" : ""}`,
      "data-testid": "graph-edge",
      "data-from": c.from,
      "data-to": c.to,
      "data-verdict": c.verdict,
      tabindex: 0,
      role: "button",
      "aria-label": label,
    },
    svg("title", {}, `${label}. ${c.reason}`),
    svg("path", { d, class: "hit" }),
    svg("path", { d, class: "line", "marker-end": `url(#arrow-${c.l7 ? "l7" : c.verdict})` }),
  );
  if (c.l7) {
    // The curve's midpoint: (a + 2m + b) / 4 for a quadratic Bézier.
    const lx = (x1 + 2 * mx + x2) / 4;
    const ly = (y1 + 2 * my + y2) / 4;
    g.append(
      svg(
        "g",
        { class: "l7-mark", transform: `translate(${lx.toFixed(1)},${ly.toFixed(1)})` },
        svg("rect", { x: -11, y: -8, width: 22, height: 16, rx: 4 }),
        svg("text", { "text-anchor": "middle", dy: "0.35em" }, "L7"),
      ),
    );
  }
  g.addEventListener("click", () => o.onSelect(c));
  g.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      o.onSelect(c);
    }
  });
  return g;
}
