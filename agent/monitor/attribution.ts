// Names the policy behind a flow. A rule cookie in the event (the deciding map entry's) maps to
// the engine's entry, hence to its policy (kind, namespace, name) and YAML path. A default-deny
// drop carries no cookie: the engine is asked (`query`) which rule made the endpoint's direction
// default-deny, so the flow says "endpoint X is selected by P for ingress and no rule allows
// it". An AUDIT verdict (audit mode) is attributed the same way: by its deny rule's cookie, or,
// with cookie 0, by the audit-mode policy whose default deny would have dropped it. The engine
// decides; this module only reads its answers, cached per policy revision.

import { DROP_POLICY, type PolicyEngine, policyName, type PolicyRef } from "@cilia/policy-wasm";
import type { PacketEvent } from "../datapath/events.ts";
import type { FlowPolicy } from "./flow.ts";

const CACHE_LIMIT = 4096;

export interface EndpointName {
  namespace: string;
  name: string;
}

export class Attribution {
  readonly #engine: PolicyEngine;
  #spec: unknown;
  #byCookie = new Map<number, number>();
  #defaults = new Map<string, FlowPolicy | null>();
  /** `cookie * 2 + audit` → the policy object flows share (never mutated). */
  #cookies = new Map<number, FlowPolicy | null>();

  constructor(engine: PolicyEngine) {
    this.#engine = engine;
  }

  #refresh(): void {
    const spec = this.#engine.spec;
    if (spec === this.#spec) return;
    this.#spec = spec;
    this.#byCookie.clear();
    this.#defaults.clear();
    this.#cookies.clear();
    for (let i = 0;; i++) {
      const e = this.#engine.entry(i);
      if (!e) break;
      if (!this.#byCookie.has(e.entry.cookie)) this.#byCookie.set(e.entry.cookie, i);
    }
  }

  #policyOf(ruleIndex: number): PolicyRef | undefined {
    const rule = this.#engine.spec.rules[ruleIndex];
    return rule ? this.#engine.spec.policies[rule.policy] : undefined;
  }

  /** The entry a cookie names, as a flow's policy object (`decision` from the entry). */
  byCookie(cookie: number, audit = false): FlowPolicy | undefined {
    if (cookie === 0) return undefined;
    this.#refresh();
    const key = cookie * 2 + (audit ? 1 : 0);
    const hit = this.#cookies.get(key);
    if (hit !== undefined) return hit ?? undefined;
    const found = this.#lookup(cookie, audit);
    if (this.#cookies.size >= CACHE_LIMIT) this.#cookies.clear();
    this.#cookies.set(key, found ?? null);
    return found;
  }

  #lookup(cookie: number, audit: boolean): FlowPolicy | undefined {
    const index = this.#byCookie.get(cookie);
    const e = index === undefined ? undefined : this.#engine.entry(index);
    const p = e ? this.#policyOf(e.rule) : undefined;
    if (!e || !p) return undefined;
    const decision = audit ? "audit" : e.entry.deny ? "deny-rule" : "allow-rule";
    const verb = audit
      ? "would be denied (audit mode) by"
      : e.entry.deny
      ? "denied by"
      : "allowed by";
    return {
      kind: p.kind,
      ...(p.namespace !== undefined ? { namespace: p.namespace } : {}),
      name: p.name,
      rule: e.entry.path,
      cookie,
      decision,
      text: `${verb} ${policyName(p)} ${e.entry.path}`,
    };
  }

  /** For a drop by the direction's default: the policy that made it default-deny. */
  defaultDeny(e: PacketEvent, ep: EndpointName | undefined, audit = false): FlowPolicy | undefined {
    if (e.direction === "unknown" || e.epId === 0) return undefined;
    this.#refresh();
    const peer = e.direction === "ingress" ? e.srcIdentity : e.dstIdentity;
    const key = `${e.epId}/${e.direction}/${peer}/${e.proto}/${e.dport}/${audit}`;
    const hit = this.#defaults.get(key);
    if (hit !== undefined) return hit ?? undefined;
    let found: FlowPolicy | undefined;
    try {
      const r = this.#engine.query({
        endpoint: e.epId,
        direction: e.direction,
        peer,
        proto: e.proto,
        port: e.dport,
      });
      const p = r.defaultDenyRule >= 0 ? this.#policyOf(r.defaultDenyRule) : undefined;
      if (p) {
        const rule = this.#engine.spec.rules[r.defaultDenyRule]!;
        const who = ep ? `endpoint ${ep.namespace}/${ep.name}` : `endpoint ${e.epId}`;
        found = {
          kind: p.kind,
          ...(p.namespace !== undefined ? { namespace: p.namespace } : {}),
          name: p.name,
          rule: rule.path,
          decision: audit ? "audit" : "default-deny",
          text: `${who} is selected by ${policyName(p)} (${rule.path}) for ${e.direction} and ` +
            `no rule allows it${audit ? " (audit mode: passed)" : ""}`,
        };
      }
    } catch {
      // the endpoint is gone from the engine: no attribution
    }
    if (this.#defaults.size >= CACHE_LIMIT) this.#defaults.clear();
    this.#defaults.set(key, found ?? null);
    return found;
  }

  /** The policy object of an event: its cookie's entry, or the default-deny rule of a drop. */
  of(e: PacketEvent, ep: EndpointName | undefined, audit = false): FlowPolicy | undefined {
    const byCookie = this.byCookie(e.cookie, audit);
    if (byCookie) return byCookie;
    if (e.type !== "trace" && (e.subtype === DROP_POLICY || audit)) {
      return this.defaultDeny(e, ep, audit);
    }
    return undefined;
  }
}
