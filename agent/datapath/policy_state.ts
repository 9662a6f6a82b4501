// One endpoint's policy as the kernel holds it: the engine's map-state entries and the policy-map
// keys they encode to (a port range becomes several prefix blocks, and two ranges may share a
// block, so every key counts the entries that need it). plan() turns a map-state diff into the
// key writes that realize it without touching the state; commit() then records it, so a failed
// write leaves the state as the kernel still has it. It is the one planner of policy-map writes:
// the agent, the kernel tests and the benches all reach it through KernelSink. Pure: no I/O.
import type { MapStateEntry } from "@cilia/policy-wasm";
import type { SinkEntry } from "../endpoint/datapath_sink.ts";
import { entryKey } from "../endpoint/mapstate_diff.ts";
import { VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY, VERDICT_REDIRECT } from "./codecs.ts";
import {
  type EncodedEntry,
  encodePolicyEntry,
  keyId,
  type PolicyEntry,
  type Verdict,
} from "./policy_map.ts";

const VERDICTS: Record<MapStateEntry["verdict"], Verdict> = {
  allow: VERDICT_ALLOW,
  deny: VERDICT_DENY,
  redirect: VERDICT_REDIRECT,
  // Passes; the kernel reports the drop an audit-mode policy would have made (the cookie says
  // which: a deny rule's, or 0 for its default deny).
  audit: VERDICT_AUDIT,
};

/** A map-state entry as a datapath policy entry (a 1:1 field mapping, the proxy port too). */
export function policyEntryOf(e: SinkEntry): PolicyEntry {
  return {
    egress: e.direction === "egress",
    identity: e.identity,
    proto: e.proto,
    portLo: e.portLo,
    portHi: e.portHi,
    verdict: VERDICTS[e.verdict],
    cookie: e.cookie,
    ...(e.proxyPort ? { proxyPort: e.proxyPort } : {}),
  };
}

interface Slot {
  key: Uint8Array;
  value: Uint8Array;
  refs: number;
}

export interface PolicyPlan {
  updates: EncodedEntry[];
  deletes: Uint8Array[];
  /** Records the plan as written. */
  commit(): void;
}

const sameBytes = (a: Uint8Array, b: Uint8Array) =>
  a.length === b.length && a.every((x, i) => x === b[i]);

export class EndpointPolicyState {
  readonly epId: number;
  #entries = new Map<string, MapStateEntry>();
  #slots = new Map<string, Slot>();

  constructor(epId: number) {
    this.epId = epId;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** The policy-map keys of the state as recorded (what the kernel holds after the commits). */
  keys(): Uint8Array[] {
    return [...this.#slots.values()].map((s) => s.key);
  }

  /**
   * The writes for a diff. With `full`, every key of the resulting state is written (the kernel
   * holds none of it yet); `stale` are keys the kernel holds for this endpoint from before (a
   * restart): each is deleted unless the resulting state has it.
   */
  plan(
    diff: { adds: readonly SinkEntry[]; deletes: readonly MapStateEntry[] },
    opts: { full?: boolean; stale?: readonly Uint8Array[] } = {},
  ): PolicyPlan {
    // Copy on write: only what the diff touches is copied (a diff of one peer identity costs the
    // same with 10 or 10,000 entries recorded); `undefined` marks a key the plan removes.
    const entries = new Map<string, MapStateEntry | undefined>();
    const slots = new Map<string, Slot | undefined>();
    const entryOf = (k: string) => entries.has(k) ? entries.get(k) : this.#entries.get(k);
    const slotOf = (id: string): Slot | undefined => {
      if (slots.has(id)) return slots.get(id);
      const base = this.#slots.get(id);
      const s = base && { ...base };
      slots.set(id, s);
      return s;
    };
    const drop = (e: MapStateEntry) => {
      for (const { key } of encodePolicyEntry(this.epId, policyEntryOf(e))) {
        const id = keyId(key), s = slotOf(id);
        if (s && --s.refs <= 0) slots.set(id, undefined);
      }
    };
    for (const e of diff.deletes) {
      const k = entryKey(e), old = entryOf(k);
      if (old) drop(old);
      entries.set(k, undefined);
    }
    for (const e of diff.adds) {
      const k = entryKey(e), old = entryOf(k);
      if (old) drop(old);
      entries.set(k, e);
      for (const { key, value } of encodePolicyEntry(this.epId, policyEntryOf(e))) {
        const id = keyId(key), s = slotOf(id);
        if (s) {
          s.refs++;
          s.value = value;
        } else slots.set(id, { key, value, refs: 1 });
      }
    }
    const updates: EncodedEntry[] = [];
    const deletes: Uint8Array[] = [];
    if (opts.full) {
      for (const [id, s] of this.#slots) {
        if (!slots.has(id)) updates.push({ key: s.key, value: s.value });
      }
      for (const s of slots.values()) if (s) updates.push({ key: s.key, value: s.value });
    } else {
      for (const [id, now] of slots) {
        const before = this.#slots.get(id);
        if (now && (!before || !sameBytes(before.value, now.value))) {
          updates.push({ key: now.key, value: now.value });
        } else if (!now && before) deletes.push(before.key);
      }
    }
    const holds = (id: string) => slots.has(id) ? slots.get(id) !== undefined : this.#slots.has(id);
    for (const key of opts.stale ?? []) if (!holds(keyId(key))) deletes.push(key);
    return {
      updates,
      deletes,
      commit: () => {
        for (const [k, e] of entries) e ? this.#entries.set(k, e) : this.#entries.delete(k);
        for (const [id, s] of slots) s ? this.#slots.set(id, s) : this.#slots.delete(id);
      },
    };
  }
}
