// Service records → the `ServiceRef`s that toServices in policies resolves against
// (policy-wasm/src/translate_services.ts): one per named service ("namespace/name"), the records
// of its ports merged, with its selector, its labels and its backends' addresses (terminating
// ones included: they still serve their connections). A record without a name cannot be named
// by a policy and is left out. Pure and deterministic (sorted), so that an unchanged set of
// services compares equal and the policy is not reloaded for nothing.
import type { ServiceRef } from "@cilia/policy-wasm";
import { compareIp, type ServiceSpec } from "./spec.ts";

export function policyServiceRefs(records: readonly ServiceSpec[]): ServiceRef[] {
  const byName = new Map<string, { ref: ServiceRef; ips: Set<string> }>();
  for (const r of records) {
    if (!r.name) continue;
    const [namespace, name] = r.name.split("/") as [string, string];
    let e = byName.get(r.name);
    if (!e) {
      const ref: ServiceRef = { name, namespace, backends: [] };
      if (r.selector && Object.keys(r.selector).length > 0) ref.selector = r.selector;
      if (r.labels && Object.keys(r.labels).length > 0) ref.labels = r.labels;
      e = { ref, ips: new Set() };
      byName.set(r.name, e);
    }
    for (const b of r.backends) e.ips.add(b.ip);
  }
  return [...byName.keys()].sort().map((k) => {
    const { ref, ips } = byName.get(k)!;
    return { ...ref, backends: [...ips].sort(compareIp) };
  });
}
