// The policy engine's WASM entry: the coarse, number-only functions the TypeScript facade
// (policy-wasm/src/engine.ts) calls. Payloads travel through the I/O buffers of io.ts; results
// are i32 statuses (wire.ts ST_*), never exceptions. No classes or strings cross this boundary.

import {
  loadEndpoints,
  loadRules,
  removeIdentities,
  updateEndpoints,
  upsertIdentities,
} from "./load";
import { ipcacheUpdate, ipLookup } from "./ipcache";
import { endpointsAffected, mapstateCompute, mapstateForIdentity } from "./mapstate";
import { query as runQuery, queryVerdict } from "./query";
import { internedCount } from "./model";

export { input_reserve, output_len, output_ptr } from "./io";

/** Version of the message format this engine reads (wire.ts VERSION). */
export function engine_abi_version(): i32 {
  return 1;
}

export function rules_load(len: i32): i32 {
  return loadRules(len);
}

export function identities_upsert(len: i32): i32 {
  return upsertIdentities(len);
}

export function identities_remove(len: i32): i32 {
  return removeIdentities(len);
}

/** Strings the engine holds interned (policy's, and the labels of the identities it holds). */
export function interned_count(): i32 {
  return internedCount();
}

export function endpoints_load(len: i32): i32 {
  return loadEndpoints(len);
}

/** Adds, replaces and removes some endpoints; the others stay (MSG_ENDPOINTS_UPDATE). */
export function endpoints_update(len: i32): i32 {
  return updateEndpoints(len);
}

/** The endpoints whose map-state has entries keyed by `identity` (u32 count, u32 ids). */
export function endpoints_affected(identity: u32): i32 {
  return endpointsAffected(identity);
}

export function ipcache_update(len: i32): i32 {
  return ipcacheUpdate(len);
}

export function ip_lookup(len: i32): i32 {
  return ipLookup(len);
}

export function mapstate_compute(epId: u32): i32 {
  return mapstateCompute(epId);
}

export function mapstate_for_identity(epId: u32, identity: u32): i32 {
  return mapstateForIdentity(epId, identity);
}

export function query(len: i32): i32 {
  return runQuery(len);
}

/** query() without the explanation: the L7 proxy's per-request verdict (16 bytes of output). */
export function query_verdict(len: i32): i32 {
  return queryVerdict(len);
}

// Called instead of the host's env.abort (see --use abort in scripts/build_wasm.ts): a broken
// invariant traps; the facade turns the trap into an EngineError.
export function abortHandler(msg: usize, file: usize, line: u32, col: u32): void {
  unreachable();
}

export {
  regex_compile,
  regex_error_offset,
  regex_match,
  regex_match_batch,
  regex_match_set,
  regex_release,
  regex_set_compile,
  regex_set_error_index,
} from "./regex/exports";
