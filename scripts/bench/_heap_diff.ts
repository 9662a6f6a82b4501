// `bin/deno run -A scripts/bench/_heap_diff.ts A.heapsnapshot B.heapsnapshot [--top N]`: what
// grew between two V8 heap snapshots (e.g. the churn bench's `--snapshots 2,8`), grouped the way
// DevTools' summary groups them (node type and constructor or name), by count and by self size.
// A structure keyed by endpoint or identity that is never pruned shows as a constructor whose
// count grows with the pods churned between the two snapshots.

import { parseArgs } from "node:util";

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

export interface Group {
  key: string;
  count: number;
  bytes: number;
}

/** Node count and self size per `type:name` ("object:Map", "closure:onEvent", …). */
export function groups(s: Snapshot): Map<string, Group> {
  const f = s.snapshot.meta.node_fields;
  const width = f.length;
  const [typeAt, nameAt, sizeAt] = [f.indexOf("type"), f.indexOf("name"), f.indexOf("self_size")];
  const types = s.snapshot.meta.node_types[0];
  const out = new Map<string, Group>();
  for (let i = 0; i < s.nodes.length; i += width) {
    const type = types[s.nodes[i + typeAt]!]!;
    // Strings are grouped by type only: their text is the name, and would make one group each.
    const name = type === "string" || type === "concatenated string" || type === "sliced string"
      ? ""
      : s.strings[s.nodes[i + nameAt]!]!.slice(0, 80);
    const key = `${type}:${name}`;
    const g = out.get(key) ?? { key, count: 0, bytes: 0 };
    g.count++;
    g.bytes += s.nodes[i + sizeAt]!;
    out.set(key, g);
  }
  return out;
}

/** Groups whose count or size grew from `a` to `b`, largest growth in bytes first. */
export function diff(a: Map<string, Group>, b: Map<string, Group>, top: number): string[] {
  const rows = [...b.values()].map((g) => {
    const was = a.get(g.key) ?? { count: 0, bytes: 0 };
    return { key: g.key, dCount: g.count - was.count, dBytes: g.bytes - was.bytes, now: g };
  }).filter((r) => r.dCount > 0 || r.dBytes > 0)
    .sort((x, y) => y.dBytes - x.dBytes || y.dCount - x.dCount)
    .slice(0, top);
  const total = (m: Map<string, Group>) =>
    [...m.values()].reduce((t, g) => ({ count: t.count + g.count, bytes: t.bytes + g.bytes }), {
      count: 0,
      bytes: 0,
    });
  const [ta, tb] = [total(a), total(b)];
  return [
    `nodes ${ta.count} -> ${tb.count} (${tb.count - ta.count >= 0 ? "+" : ""}${
      tb.count - ta.count
    }), self size ${ta.bytes} -> ${tb.bytes} bytes (${tb.bytes - ta.bytes >= 0 ? "+" : ""}${
      tb.bytes - ta.bytes
    })`,
    ...rows.map((r) =>
      `${String(r.dBytes).padStart(10)} B ${String(r.dCount).padStart(8)} #  ` +
      `(now ${r.now.count} #, ${r.now.bytes} B)  ${r.key}`
    ),
  ];
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { top: { type: "string", default: "40" } },
  });
  if (positionals.length !== 2) {
    throw new Error("Usage: _heap_diff.ts A.heapsnapshot B.heapsnapshot [--top N]");
  }
  const load = async (p: string) => groups(JSON.parse(await Deno.readTextFile(p)) as Snapshot);
  const [a, b] = [await load(positionals[0]!), await load(positionals[1]!)];
  console.log(diff(a, b, Number(values.top)).join("\n"));
}
