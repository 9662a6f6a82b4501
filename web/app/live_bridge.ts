// The simulator's side of `cilia ui`'s read-only bridge: whether the page runs live (the printed
// URL carries `?token=`), and GETs on the agent's API under `api/v1/…` with that token. The
// cluster's endpoints and policies become a scenario the editor and matrix show. This module is
// browser compatible (it needs fetch and location).

import type { Scenario } from "../../policy-wasm/mod.ts";

/** The access token of the page's URL, when the page is served by `cilia ui`. */
export function liveToken(): string | undefined {
  return new URLSearchParams(location.search).get("token") ?? undefined;
}

export class Bridge {
  constructor(readonly token: string) {}

  async get(path: string, accept = "application/json"): Promise<Response> {
    const res = await fetch(`api${path}`, {
      headers: { authorization: `Bearer ${this.token}`, accept },
    });
    if (!res.ok) {
      const text = await res.text();
      let msg = text;
      try {
        msg = JSON.parse(text)?.error?.message ?? text;
      } catch { /* plain text */ }
      throw new Error(`The bridge answered ${res.status} for ${path}: ${msg.slice(0, 300)}`);
    }
    return res;
  }

  /** The agent's flows as NDJSON text (`params`: observe's filters, `last`). */
  async flows(params: URLSearchParams): Promise<string> {
    return await (await this.get(`/v1/flows?${params}`, "application/x-ndjson")).text();
  }

  /** The cluster as a scenario: the agent's endpoints, their namespaces, and its policies. */
  async cluster(): Promise<Scenario> {
    // deno-lint-ignore no-explicit-any
    const eps: any[] = await (await this.get("/v1/endpoint")).json();
    const pol: { policies: { text: string }[] } = await (await this.get("/v1/policy")).json();
    const ns = new Map<string, Record<string, string>>();
    for (const e of eps) ns.set(e.namespace, { ...ns.get(e.namespace), ...e.namespaceLabels });
    return {
      name: "live cluster",
      description: "The node's endpoints and policies, read-only. Fork them into a draft to edit.",
      namespaces: [...ns].map(([name, labels]) => ({ name, labels })),
      policies: pol.policies.map((p) => p.text),
      endpoints: eps.map((e) => ({
        name: e.name,
        namespace: e.namespace,
        labels: e.labels ?? {},
        ...(e.ipv4 ? { ip: e.ipv4 } : {}),
        ...(e.ipv6 ? { ipv6: e.ipv6 } : {}),
        ...(e.serviceAccount ? { serviceAccount: e.serviceAccount } : {}),
      })),
      queries: [],
    };
  }
}

/** `--from-pod default/web --not --verdict DROPPED` → the agent's flow query parameters. */
export function filterParams(text: string): URLSearchParams {
  const p = new URLSearchParams();
  const words = text.trim().split(/\s+/).filter(Boolean);
  let not = false;
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    if (w === "--not") {
      not = true;
      continue;
    }
    if (!w.startsWith("--")) {
      throw new Error(`Expected a filter such as --from-pod NS/NAME, got "${w}"`);
    }
    const eq = w.indexOf("=");
    const name = w.slice(2, eq >= 0 ? eq : undefined);
    const value = eq >= 0 ? w.slice(eq + 1) : words[++i];
    if (value === undefined) throw new Error(`Missing value for ${w}`);
    p.append(not ? `not.${name}` : name, value);
    not = false;
  }
  return p;
}
