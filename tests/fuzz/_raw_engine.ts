/**
 * The policy engine as a bare WebAssembly instance (no PolicyEngine facade), for feeding it bytes
 * the facade would never send: the seed messages of the seed state, a harness that writes a
 * message and calls an export reporting traps as values, and a fingerprint of the engine's
 * observable state (map-states, query answers, IP lookups) to prove a rejected message changed
 * nothing.
 */

import {
  cidrIdentityLabels,
  cidrPrefixesOf,
  compilePolicies,
  DEFAULT_OPTIONS,
  type IdentitySpec,
  LOCAL_IDENTITY_BASE,
  PolicyEngine,
  type QueryInput,
  SimCluster,
} from "../../policy-wasm/mod.ts";
import {
  encodeEndpoints,
  encodeIdentities,
  encodeIdentityRemoval,
  encodeIpcache,
  encodeIpLookup,
  encodeRules,
} from "../../policy-wasm/src/encode.ts";
import { encodeQuery } from "../../policy-wasm/src/query_codec.ts";
import type { EngineExports } from "../../policy-wasm/src/engine.ts";
import { SEED_ENDPOINTS, SEED_LOOKUPS, SEED_POLICY, seedQueries } from "./_seed_policy.ts";

export const WASM_URL = new URL("../../policy-wasm/build/policy.wasm", import.meta.url);

/** The raw exports, as the facade sees them. */
export type RawExports = EngineExports;

export type MessageExport =
  | "rules_load"
  | "identities_upsert"
  | "identities_remove"
  | "endpoints_load"
  | "ipcache_update"
  | "ip_lookup"
  | "query";

/** Exports whose accepted message changes the engine's state. */
export const STATEFUL: readonly MessageExport[] = [
  "rules_load",
  "identities_upsert",
  "identities_remove",
  "endpoints_load",
  "ipcache_update",
];

/** A call's result: the i32 status, or the trap. */
export type Outcome = { status: number } | { trap: string };

export function isTrap(o: Outcome): o is { trap: string } {
  return "trap" in o;
}

export class RawEngine {
  readonly x: RawExports;

  constructor(module: WebAssembly.Module) {
    this.x = new WebAssembly.Instance(module, {}).exports as unknown as RawExports;
  }

  /** Calls `fn`, turning a trap (any exception out of WASM) into a value. */
  guard(fn: () => number): Outcome {
    try {
      return { status: fn() };
    } catch (err) {
      return { trap: err instanceof Error ? `${err.name}: ${err.message}` : String(err) };
    }
  }

  /** Writes `bytes` to the input buffer and calls `fn(len)` (len defaults to the byte count). */
  send(fn: MessageExport, bytes: Uint8Array, len = bytes.length): Outcome {
    return this.guard(() => {
      const ptr = this.x.input_reserve(bytes.length);
      new Uint8Array(this.x.memory.buffer, ptr, bytes.length).set(bytes);
      return this.x[fn](len);
    });
  }

  output(): Uint8Array {
    return new Uint8Array(this.x.memory.buffer, this.x.output_ptr(), this.x.output_len()).slice();
  }
}

export interface Seeds {
  module: WebAssembly.Module;
  /** Valid messages per export (the first of the stateful ones builds the seed state). */
  messages: Record<MessageExport, Uint8Array[]>;
  /** The messages that build the seed state, in order. */
  setup: [MessageExport, Uint8Array][];
  endpointIds: number[];
  identityIds: number[];
  queries: QueryInput[];
}

export async function loadSeeds(): Promise<Seeds> {
  const module = await WebAssembly.compile(await Deno.readFile(WASM_URL));
  const engine = await PolicyEngine.create(module);
  const { spec } = compilePolicies({ text: SEED_POLICY, file: "seed.yaml" }, {
    regexCheck: (p) => engine.checkRegex(p),
  });
  engine.close();
  const cluster = new SimCluster({ endpoints: SEED_ENDPOINTS });
  const cidrs: IdentitySpec[] = cidrPrefixesOf(spec).map((prefix, i) => ({
    id: LOCAL_IDENTITY_BASE + 1 + i,
    labels: cidrIdentityLabels(prefix),
    cidr: prefix,
  }));
  const identities = [...cluster.identities, ...cidrs];
  const rules = encodeRules(spec, DEFAULT_OPTIONS).bytes;
  const ids = encodeIdentities(identities);
  const eps = encodeEndpoints(
    cluster.endpoints.map((e) => ({ id: e.id, identity: e.identity, namedPorts: e.ports })),
  );
  const ipc = encodeIpcache(
    cluster.endpoints.flatMap((e) => e.ips.map((ip) => ({ prefix: ip, identity: e.identity }))),
    [],
  );
  const queries = seedQueries((n) => cluster.endpoint(n)!.identity);
  const one = (i: IdentitySpec) => encodeIdentities([i]);
  return {
    module,
    setup: [
      ["identities_upsert", ids],
      ["rules_load", rules],
      ["endpoints_load", eps],
      ["ipcache_update", ipc],
    ],
    messages: {
      rules_load: [rules],
      identities_upsert: [ids, ...identities.slice(-3).map(one)],
      identities_remove: [encodeIdentityRemoval(identities.map((i) => i.id).slice(-4))],
      endpoints_load: [eps],
      ipcache_update: [
        ipc,
        encodeIpcache([{ prefix: "10.9.0.0/16", identity: 256 }], [{
          prefix: "10.0.0.1",
          identity: 256,
        }]),
      ],
      ip_lookup: SEED_LOOKUPS.map(encodeIpLookup),
      query: queries.map(encodeQuery),
    },
    endpointIds: cluster.endpoints.map((e) => e.id),
    identityIds: identities.map((i) => i.id),
    queries,
  };
}

/** A fresh instance with the seed state loaded (every setup message must be accepted). */
export function seededEngine(seeds: Seeds): RawEngine {
  const e = new RawEngine(seeds.module);
  for (const [fn, bytes] of seeds.setup) {
    const o = e.send(fn, bytes);
    if (isTrap(o) || o.status !== 0) {
      throw new Error(`The seed message of ${fn} was not accepted: ${JSON.stringify(o)}`);
    }
  }
  return e;
}

/**
 * Everything observable about the engine's state, as one string: every endpoint's map-state,
 * every seed query and IP lookup (status and output bytes). Throws on a trap.
 */
export function fingerprint(e: RawEngine, seeds: Seeds): string {
  const parts: string[] = [];
  const add = (what: string, o: Outcome) => {
    if (isTrap(o)) throw new Error(`${what} trapped: ${o.trap}`);
    parts.push(`${what}=${o.status}:${o.status === 0 ? e.output().join(",") : ""}`);
  };
  for (const ep of [...seeds.endpointIds, 999]) {
    add(`mapstate(${ep})`, e.guard(() => e.x.mapstate_compute(ep)));
  }
  seeds.messages.query.forEach((q, i) => add(`query#${i}`, e.send("query", q)));
  seeds.messages.ip_lookup.forEach((q, i) => add(`lookup#${i}`, e.send("ip_lookup", q)));
  return parts.join("\n");
}
