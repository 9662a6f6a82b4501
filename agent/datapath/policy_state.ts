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
    const entries = new Map(this.#entries);
    const slots = new Map([...this.#slots].map(([k, s]) => [k, { ...s }]));
    const touched = new Set<string>();
    const drop = (e: MapStateEntry) => {
      for (const { key } of encodePolicyEntry(this.epId, policyEntryOf(e))) {
        const id = keyId(key), s = slots.get(id);
        if (s && --s.refs <= 0) slots.delete(id);
        touched.add(id);
      }
    };
    for (const e of diff.deletes) {
      const old = entries.get(entryKey(e));
      if (old) drop(old);
      entries.delete(entryKey(e));
    }
    for (const e of diff.adds) {
      const old = entries.get(entryKey(e));
      if (old) drop(old);
      entries.set(entryKey(e), e);
      for (const { key, value } of encodePolicyEntry(this.epId, policyEntryOf(e))) {
        const id = keyId(key), s = slots.get(id);
        if (s) {
          s.refs++;
          s.value = value;
        } else slots.set(id, { key, value, refs: 1 });
        touched.add(id);
      }
    }
    const updates: EncodedEntry[] = [];
    const deletes: Uint8Array[] = [];
    if (opts.full) {
      for (const s of slots.values()) updates.push({ key: s.key, value: s.value });
    } else {
      for (const id of touched) {
        const now = slots.get(id), before = this.#slots.get(id);
        if (now && (!before || !sameBytes(before.value, now.value))) {
          updates.push({ key: now.key, value: now.value });
        } else if (!now && before) deletes.push(before.key);
      }
    }
    for (const key of opts.stale ?? []) if (!slots.has(keyId(key))) deletes.push(key);
    return {
      updates,
      deletes,
      commit: () => {
        this.#entries = entries;
        this.#slots = slots;
      },
    };
  }
}
