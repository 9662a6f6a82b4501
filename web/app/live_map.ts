// The service map of live mode, like Hubble UI's but cluster-wide: one node per workload (its
// identity labels in a namespace), per outside address and per entity; one edge per observed
// (source, destination) pair, coloured by verdict (green allowed, red dropped, amber both) and
// labelled with its ports and HTTP requests. Clicking an edge lists its connections. It draws SVG
// from observed connections and decides nothing. This module is browser compatible (it needs a
// DOM).

import {
  clusterOfConnections,
  type ObservedConnection,
  type ObservedPeer,
  peerText,
} from "../../policy-wasm/mod.ts";
import { fill, h } from "./dom.ts";

const NS = "http://www.w3.org/2000/svg";

function svg(tag: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

interface Edge {
  from: string;
  to: string;
  conns: ObservedConnection[];
}

/** Draws the map into `el`; `onEdge` gets the connections of a clicked edge. */
export function renderServiceMap(
  el: HTMLElement,
  conns: readonly ObservedConnection[],
  onEdge: (label: string, conns: ObservedConnection[]) => void,
): void {
  const cluster = clusterOfConnections(conns);
  const name = (p: ObservedPeer) =>
    p.kind === "endpoint"
      ? cluster.workload(p)
      : p.kind === "world"
      ? (p.names[0] ?? p.ip)
      : peerText({ entity: p.entity });
  const edges = new Map<string, Edge>();
  const nodes = new Map<string, ObservedPeer["kind"]>();
  for (const c of conns) {
    const [a, b] = [name(c.from), name(c.to)];
    nodes.set(a, c.from.kind);
    nodes.set(b, c.to.kind);
    const e = edges.get(`${a}>${b}`) ?? { from: a, to: b, conns: [] };
    e.conns.push(c);
    edges.set(`${a}>${b}`, e);
  }
  if (nodes.size === 0) {
    return fill(el, h("p", { class: "muted" }, "No flows yet: the map draws observed traffic."));
  }
  const list = [...nodes.keys()].sort();
  const w = 760,
    hgt = Math.max(320, 60 * Math.ceil(list.length / 2)),
    r = Math.min(w, hgt) / 2 - 60;
  const pos = new Map(list.map((n, i) => {
    const a = (2 * Math.PI * i) / list.length - Math.PI / 2;
    return [n, { x: w / 2 + r * 1.5 * Math.cos(a), y: hgt / 2 + r * Math.sin(a) }];
  }));
  const root = svg("svg", {
    viewBox: `0 0 ${w} ${hgt}`,
    class: "service-map",
    "data-testid": "service-map",
  });
  root.append(svg("defs", {}));
  for (const e of edges.values()) {
    const p = pos.get(e.from)!, q = pos.get(e.to)!;
    const allowed = e.conns.some((c) => c.observed === "allowed");
    const denied = e.conns.some((c) => c.observed === "denied");
    const color = allowed && denied ? "#d97706" : denied ? "#dc2626" : "#16a34a";
    const label = [
      ...new Set(
        e.conns.map((c) =>
          `${c.protocol}/${c.port}${c.http ? ` ${c.http.method} ${c.http.path}` : ""}`
        ),
      ),
    ].join(", ");
    const g = svg("g", { class: "edge", "data-edge": `${e.from} -> ${e.to}`, tabindex: 0 });
    g.append(
      svg("line", { x1: p.x, y1: p.y, x2: q.x, y2: q.y, stroke: color, "stroke-width": 2.5 }),
    );
    const mx = p.x + (q.x - p.x) * 0.6, my = p.y + (q.y - p.y) * 0.6;
    g.append(svg("circle", { cx: mx, cy: my, r: 4, fill: color }));
    g.append(svg("text", { x: mx + 6, y: my - 6, class: "edge-label", fill: color }, label));
    g.addEventListener("click", () => onEdge(`${e.from} → ${e.to}`, e.conns));
    root.append(g);
  }
  for (const n of list) {
    const p = pos.get(n)!;
    const kind = nodes.get(n)!;
    const g = svg("g", { class: `node ${kind}`, "data-node": n });
    const width = Math.max(90, n.length * 7 + 16);
    g.append(svg("rect", { x: p.x - width / 2, y: p.y - 15, width, height: 30, rx: 8 }));
    g.append(svg("text", { x: p.x, y: p.y + 4, "text-anchor": "middle" }, n));
    root.append(g);
  }
  fill(el, root as unknown as Node);
}
