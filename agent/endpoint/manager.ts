/**
 * This node's endpoints: records at `cilia/endpoints/<node>/<id>`, each with the identity its
 * labels map to (one reference per endpoint), its addresses claimed in IPAM, and its map-state
 * kept by the regenerator. A change is validated, the identity acquired, then the record stored
 * and the endpoint regenerated, one change at a time; a failure releases what was taken and
 * stores nothing. `restore()` brings back the records after a restart with fresh references.
 */

import { type IdentitySpec, LabelFilter } from "@cilia/policy-wasm";
import type { KvStore } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import type { Serial } from "../_serial.ts";
import type { IdentityAllocator } from "../identity/allocator.ts";
import type { Ipam } from "../ipam/ipam.ts";
import type { RegenEndpoint, Regenerator } from "./regenerator.ts";
import {
  endpointKey,
  type EndpointRecord,
  type EndpointSpec,
  EndpointSpecSchema,
  endpointsPrefix,
  identityLabelsOf,
  ipsOf,
} from "./spec.ts";

export class EndpointNotFoundError extends Error {
  override name = "EndpointNotFoundError";
}

export class EndpointConflictError extends Error {
  override name = "EndpointConflictError";
}

export interface EndpointManagerOptions {
  store: KvStore;
  node: string;
  allocator: IdentityAllocator;
  regen: Regenerator;
  ipam: Ipam;
  serial: Serial;
  clusterName: string;
  identityLabels: readonly string[];
  log: Logger;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export class EndpointManager {
  #o: EndpointManagerOptions;
  #filter: LabelFilter;
  #eps = new Map<number, EndpointRecord>();
  /** Ids by address, by name and by container interface: lookups that do not scan them all. */
  #byIp = new Map<string, Set<number>>();
  #byName = new Map<string, Set<number>>();
  #byContainer = new Map<string, Set<number>>();
  /** Restored records that `restore()`'s `prepare` changed: stored again by their `#put`. */
  #rewrite = new Set<number>();

  constructor(opts: EndpointManagerOptions) {
    this.#o = opts;
    this.#filter = new LabelFilter(opts.identityLabels);
  }

  get size(): number {
    return this.#eps.size;
  }

  list(): EndpointRecord[] {
    return [...this.#eps.values()].sort((a, b) => a.id - b.id);
  }

  get(id: number): EndpointRecord {
    const ep = this.#eps.get(id);
    if (ep === undefined) throw new EndpointNotFoundError(`Endpoint ${id} does not exist`);
    return ep;
  }

  /** By id, `namespace/name` or name (the first with that name, by id). */
  find(ref: string): EndpointRecord | undefined {
    if (/^\d+$/.test(ref)) return this.#eps.get(Number(ref));
    const slash = ref.indexOf("/");
    const name = slash >= 0 ? ref.slice(slash + 1) : ref;
    let found: EndpointRecord | undefined;
    for (const id of this.#byName.get(name) ?? []) {
      const e = this.#eps.get(id)!;
      if (slash >= 0 && `${e.namespace}/${e.name}` !== ref) continue;
      if (found === undefined || e.id < found.id) found = e;
    }
    return found;
  }

  /** The endpoint of a container's interface (a CNI attachment), if any. */
  findContainer(containerId: string, ifname: string): EndpointRecord | undefined {
    const ids = [...this.#byContainer.get(`${containerId}/${ifname}`) ?? []];
    return ids.length === 0 ? undefined : this.#eps.get(Math.min(...ids));
  }

  /** Whether endpoint id `id` is taken. */
  has(id: number): boolean {
    return this.#eps.has(id);
  }

  #index(ep: EndpointRecord, add: boolean): void {
    const file = (m: Map<string, Set<number>>, k: string) => {
      const ids = m.get(k) ?? new Set<number>();
      if (add) ids.add(ep.id);
      else ids.delete(ep.id);
      if (ids.size > 0) m.set(k, ids);
      else m.delete(k);
    };
    for (const ip of ipsOf(ep)) file(this.#byIp, ip);
    file(this.#byName, ep.name);
    if (ep.containerId !== undefined) {
      file(this.#byContainer, `${ep.containerId}/${ep.containerIfname ?? "eth0"}`);
    }
  }

  identityLabels(spec: EndpointSpec): string[] {
    return identityLabelsOf(spec, { clusterName: this.#o.clusterName, filter: this.#filter });
  }

  /**
   * Creates or replaces endpoint `id`. `identity`: the identity of its labels, taken beforehand
   * with `acquireIdentity()` (a CNI ADD does that while it builds the interface); `put` owns
   * that reference from then on and releases it if it fails.
   */
  put(
    id: number,
    spec: EndpointSpec,
    opts: { identity?: IdentitySpec } = {},
  ): Promise<{ endpoint: EndpointRecord; created: boolean }> {
    return this.#put(id, spec, undefined, opts.identity);
  }

  /** The identity of `spec`'s labels with one more reference, for `put()`. */
  acquireIdentity(spec: EndpointSpec): Promise<IdentitySpec> {
    return this.#o.allocator.acquire(this.identityLabels(spec));
  }

  /** Drops a reference `acquireIdentity()` took and no `put()` received. */
  releaseIdentity(identity: IdentitySpec): Promise<void> {
    return this.#o.allocator.release(identity.id);
  }

  /**
   * `restored`: the record read back at start; kept as is when its identity is unchanged.
   * `acquired`: its identity, already acquired by the caller (released here on failure).
   */
  async #put(
    id: number,
    spec: EndpointSpec,
    restored?: EndpointRecord,
    acquired?: IdentitySpec,
  ): Promise<{ endpoint: EndpointRecord; created: boolean }> {
    let identity = acquired;
    try {
      this.#checkAddresses(id, spec); // again below; first so that a conflict allocates nothing
    } catch (err) {
      if (acquired) await this.#o.allocator.release(acquired.id);
      throw err;
    }
    const t = [performance.now()];
    identity ??= await this.#o.allocator.acquire(this.identityLabels(spec));
    t.push(performance.now());
    try {
      return await this.#o.serial.run(async () => {
        t.push(performance.now());
        this.#checkAddresses(id, spec);
        const prev = this.#eps.get(id);
        const now = new Date().toISOString();
        const unchanged = restored !== undefined && restored.identity === identity.id;
        const record: EndpointRecord = unchanged ? restored : {
          ...spec,
          id,
          node: this.#o.node,
          identity: identity.id,
          identityLabels: identity.labels,
          createdAt: prev?.createdAt ?? restored?.createdAt ?? now,
          updatedAt: now,
        };
        // A restored endpoint whose write fails stays (not ready, retried); a new one is undone.
        await this.#o.regen.upsertEndpoint(regenEndpoint(record), {
          retry: restored !== undefined,
        });
        t.push(performance.now());
        try {
          if (!unchanged || this.#rewrite.delete(id)) {
            await this.#o.store.put(
              endpointKey(this.#o.node, id),
              enc.encode(JSON.stringify(record)),
            );
          }
        } catch (err) {
          if (prev) await this.#o.regen.upsertEndpoint(regenEndpoint(prev)).catch(() => {});
          else await this.#o.regen.removeEndpoint(id);
          throw err;
        }
        if (prev) this.#index(prev, false);
        this.#eps.set(id, record);
        this.#index(record, true);
        if (prev) {
          await this.#o.allocator.release(prev.identity);
          await this.#releaseAddresses(prev, record);
        }
        await this.#claimAddresses(record);
        t.push(performance.now());
        const step = (i: number) => Math.round(t[i + 1]! - t[i]!);
        // A restore's thousand lines (written synchronously, 0.2 s of a loaded restart) are
        // debug: "endpoints restored" sums them up.
        this.#o.log[restored ? "debug" : "info"](
          restored ? "endpoint restored" : prev ? "endpoint updated" : "endpoint created",
          {
            endpoint: id,
            identity: identity.id,
            // Where the time went: identity, waiting for the queue, datapath, kvstore and IPAM.
            ms: { identity: step(0), queue: step(1), regenerate: step(2), store: step(3) },
          },
        );
        return { endpoint: record, created: prev === undefined };
      });
    } catch (err) {
      await this.#o.allocator.release(identity.id);
      throw err;
    }
  }

  /** Adds and removes labels of endpoint `id` (a new identity if the set changes). */
  patchLabels(
    id: number,
    change: { add?: Record<string, string>; remove?: string[] },
  ): Promise<EndpointRecord> {
    const ep = this.get(id);
    const labels = { ...ep.labels, ...change.add };
    for (const k of change.remove ?? []) delete labels[k];
    const spec = EndpointSpecSchema.parse({ ...specOf(ep), labels });
    return this.put(id, spec).then((r) => r.endpoint);
  }

  delete(id: number): Promise<EndpointRecord> {
    return this.#o.serial.run(async () => {
      const ep = this.get(id);
      await this.#o.store.delete(endpointKey(this.#o.node, id));
      this.#eps.delete(id);
      this.#index(ep, false);
      await this.#o.regen.removeEndpoint(id);
      await this.#o.allocator.release(ep.identity);
      await this.#releaseAddresses(ep);
      this.#o.log.info("endpoint deleted", { endpoint: id });
      return ep;
    });
  }

  /**
   * Brings back this node's endpoints from the kvstore (after a restart): one listing, their
   * identities acquired RESTORE_PARALLEL at a time (the allocator writes the references that
   * come together in one batch, and reads each identity's key back), and each endpoint
   * regenerated as soon as its identity is back, so the kvstore waits and the regeneration
   * overlap. The engine learns at once the endpoints whose recorded identity it already holds
   * with the same labels (one load of its endpoint list, not one per endpoint); any other goes
   * the usual way. `prepare` may complete the records read back, in place, before any is used
   * (`restoreHostSides`); those whose ids it returns are stored again.
   */
  async restore(
    opts: { prepare?: (records: EndpointRecord[]) => Promise<Set<number>> } = {},
  ): Promise<number> {
    const started = performance.now();
    const read: { key: string; record: EndpointRecord }[] = [];
    for (const e of await this.#o.store.list(endpointsPrefix(this.#o.node))) {
      try {
        read.push({ key: e.key, record: JSON.parse(dec.decode(e.value)) as EndpointRecord });
      } catch (err) {
        this.#o.log.error("cannot restore endpoint", { key: e.key, error: err });
      }
    }
    if (opts.prepare) {
      this.#rewrite = await opts.prepare(read.map((r) => r.record)).catch((err) => {
        this.#o.log.warn("cannot prepare the restored endpoints", { error: err });
        return new Set<number>();
      });
    }
    const records: { key: string; record: EndpointRecord; spec: EndpointSpec }[] = [];
    for (const { key, record } of read) {
      try {
        records.push({ key, record, spec: EndpointSpecSchema.parse(specOf(record)) });
      } catch (err) {
        this.#o.log.error("cannot restore endpoint", { key, error: err });
      }
    }
    const listed = performance.now();
    let acquired = listed;
    const identities = startLimited(records, RESTORE_PARALLEL, async (r) => {
      const identity = await this.#o.allocator.acquire(this.identityLabels(r.spec));
      acquired = performance.now();
      return identity;
    });
    const engine = this.#o.regen.engine;
    const known = (r: EndpointRecord) => {
      const held = engine.identity(r.identity);
      return held !== undefined && sameList([...held.labels].sort(), [...r.identityLabels].sort());
    };
    await this.#o.serial.run(() =>
      this.#o.regen.preloadEndpoints(
        records.flatMap(({ record }) => known(record) ? [regenEndpoint(record)] : []),
      )
    ).catch((err) => this.#o.log.warn("cannot preload the restored endpoints", { error: err }));
    let n = 0;
    for (const [i, { key, record, spec }] of records.entries()) {
      try {
        const identity = await identities[i]!;
        if (identity instanceof Error) throw identity;
        const r = await this.#put(record.id, spec, record, identity);
        if (r.endpoint.identity !== record.identity) {
          this.#o.log.warn("restored endpoint has a new identity", {
            endpoint: record.id,
            was: record.identity,
            now: r.endpoint.identity,
          });
        }
        n++;
      } catch (err) {
        this.#o.log.error("cannot restore endpoint", { key, error: err });
      }
    }
    this.#rewrite.clear();
    await this.#o.serial.run(() => this.#o.regen.endPreload());
    const ms = (a: number, b: number) => Math.round(b - a);
    this.#o.log.info("endpoints restored", {
      endpoints: n,
      // Overlapping: until the last identity reference, and from then until the last endpoint.
      ms: {
        list: ms(started, listed),
        identities: ms(listed, acquired),
        regenerate: ms(acquired, performance.now()),
      },
    });
    return n;
  }

  #checkAddresses(id: number, spec: EndpointSpec): void {
    for (const ip of ipsOf(spec)) {
      let other: EndpointRecord | undefined;
      for (const o of this.#byIp.get(ip) ?? []) {
        const e = this.#eps.get(o)!;
        if (e.id !== id && (other === undefined || e.id < other.id)) other = e;
      }
      if (other) {
        throw new EndpointConflictError(
          `Address "${ip}" is already used by endpoint ${other.id} (${other.namespace}/${other.name})`,
        );
      }
    }
  }

  /** Records `ep`'s addresses in IPAM when they lie in a pod CIDR and are not allocated yet. */
  async #claimAddresses(ep: EndpointRecord): Promise<void> {
    for (const ip of ipsOf(ep)) {
      if (!this.#o.ipam.covers(ip) || this.#o.ipam.get(ip) !== undefined) continue;
      await this.#o.ipam.claim(ip, `endpoint:${ep.id}`).catch((err) =>
        this.#o.log.warn("cannot record the endpoint's address in IPAM", { ip, error: err })
      );
    }
  }

  /** Releases the IPAM allocations of `ep`'s addresses that `next` no longer uses. */
  async #releaseAddresses(ep: EndpointRecord, next?: EndpointRecord): Promise<void> {
    const keep = new Set(next ? ipsOf(next) : []);
    for (const ip of ipsOf(ep)) {
      if (keep.has(ip) || this.#o.ipam.get(ip) === undefined) continue;
      await this.#o.ipam.release(ip).catch((err) =>
        this.#o.log.warn("cannot release address", { ip, error: err })
      );
    }
  }
}

/** Identities acquired at once while restoring: their references make one batch (PUT_ALL_MAX). */
const RESTORE_PARALLEL = 128;

/**
 * Starts `fn` over `items`, at most `limit` at a time, in order; one promise per item, which
 * resolves to the result or the failure (never rejects).
 */
function startLimited<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R | Error>[] {
  const done: ((r: R | Error) => void)[] = [];
  const out = items.map(() => new Promise<R | Error>((resolve) => done.push(resolve)));
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      done[i]!(
        await fn(items[i]!).catch((err) => err instanceof Error ? err : new Error(String(err))),
      );
    }
  };
  for (let w = 0; w < Math.min(limit, items.length); w++) worker();
  return out;
}

const sameList = (a: readonly string[], b: readonly string[]) =>
  a.length === b.length && a.every((x, i) => x === b[i]);

function specOf(r: EndpointRecord): EndpointSpec {
  const {
    id: _id,
    node: _node,
    identity: _identity,
    identityLabels: _labels,
    createdAt: _c,
    updatedAt: _u,
    ...spec
  } = r;
  return spec;
}

/** The regenerator's (and the datapath's) view of an endpoint record. */
export function regenEndpoint(r: EndpointRecord): RegenEndpoint {
  return {
    id: r.id,
    identity: r.identity,
    identityLabels: r.identityLabels,
    name: r.name,
    namespace: r.namespace,
    ips: ipsOf(r),
    namedPorts: (r.namedPorts ?? []).map((p) => ({ ...p, name: p.name.toLowerCase() })),
    ...(r.ifname !== undefined ? { ifname: r.ifname } : {}),
    ...(r.netns !== undefined ? { netns: r.netns } : {}),
    ...(r.mac !== undefined ? { mac: r.mac } : {}),
    ...(r.hostMac !== undefined ? { hostMac: r.hostMac } : {}),
  };
}
