// Service records in the kvstore (`cilia/services/<id>`, JSON) and their way into this node's
// datapath: the API upserts and deletes records (one per frontend), every agent follows the
// prefix and hands the whole set to its sink (KernelSink.applyServices writes only the diff). A
// change is applied locally before the call returns, so a service works when the command
// returns; the watch makes every other agent converge. It decides no backend (the kernel does).
// After a write it names the (frontend, backend) pairs the write removed (a smaller backend set, a
// deleted service; a backend only turned terminating is not removed) to onBackendsRemoved, whose
// failure is logged and never fails the update (the socket LB ends their connections with it).
// The first write after a start compares with what the sink's kernel maps still hold from before
// (ServiceSink.heldBackendPairs), so a backend removed while the agent was down is named too;
// without onBackendsRemoved that read is skipped.
import type { KvStore } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import { type PrefixWatch, watchPrefix } from "../_watch.ts";
import { Serial } from "../_serial.ts";
import {
  backendText,
  frontendText,
  inCidr,
  ipFamily,
  MAX_SERVICE_ID,
  normaliseService,
  type ServiceInput,
  ServiceInputSchema,
  type ServiceSpec,
} from "./spec.ts";

export const SERVICE_PREFIX = "cilia/services/";

export interface ServiceSink {
  applyServices(
    services: readonly ServiceSpec[],
    opts?: { nodePortAddresses?: readonly string[] },
  ): Promise<void>;
  /** The pairs the datapath held before the first applyServices (a previous agent's). */
  heldBackendPairs?(): Promise<RemovedBackend[]>;
}

/** A backend that left a service's frontend (socket termination ends its connections). */
export interface RemovedBackend {
  frontend: { ip: string; port: number; protocol: "TCP" | "UDP" };
  backend: { ip: string; port: number };
  /**
   * Only in pairs read back from the datapath (heldBackendPairs): the backend had no slot, so it
   * was terminating wherever it was and its frontend is a guess (every one of its protocol).
   */
  guessed?: true;
}

const pairText = (r: RemovedBackend) => `${frontendText(r)} ${backendText(r.backend)}`;

/** Every (frontend, backend) pair of the services, keyed by its text. */
export function backendPairs(services: readonly ServiceSpec[]): Map<string, RemovedBackend> {
  const out = new Map<string, RemovedBackend>();
  for (const s of services) {
    const frontend = { ip: s.frontend.ip, port: s.frontend.port, protocol: s.frontend.protocol };
    for (const b of s.backends) {
      const r = { frontend, backend: { ip: b.ip, port: b.port } };
      out.set(pairText(r), r);
    }
  }
  return out;
}

/**
 * The pairs of `before` that `after` does not keep. A guessed pair (read back from the datapath)
 * whose backend is still in a service of its protocol is not named: a plain restart names none.
 */
function removedPairs(
  before: Map<string, RemovedBackend>,
  after: Map<string, RemovedBackend>,
): RemovedBackend[] {
  const backendOf = (r: RemovedBackend) => `${backendText(r.backend)}/${r.frontend.protocol}`;
  let kept: Set<string> | undefined;
  const out: RemovedBackend[] = [];
  for (const [k, r] of before) {
    if (after.has(k)) continue;
    if (r.guessed && (kept ??= new Set([...after.values()].map(backendOf))).has(backendOf(r))) {
      continue;
    }
    out.push({ frontend: r.frontend, backend: r.backend });
  }
  return out;
}

/** Kubernetes' default --service-node-port-range. */
export const DEFAULT_NODE_PORT_RANGE = { min: 30000, max: 32767 } as const;

/** A request the manager refuses (the API turns it into a 400 or 404). */
export class ServiceError extends Error {
  override name = "ServiceError";
  constructor(readonly code: "invalid" | "not_found", message: string) {
    super(message);
  }
}

const enc = new TextEncoder(), dec = new TextDecoder();

/** A stored record, or undefined when it is malformed (bad JSON, shape, or id). */
function parseRecord(key: string, value: Uint8Array): ServiceSpec | undefined {
  const id = Number(key.slice(SERVICE_PREFIX.length));
  let json: unknown;
  try {
    json = JSON.parse(dec.decode(value));
  } catch {
    return undefined;
  }
  const r = ServiceInputSchema.safeParse(json);
  if (!r.success || r.data.id !== id) return undefined;
  try {
    return normaliseService({ ...r.data, id });
  } catch {
    return undefined;
  }
}

/**
 * The stored records, read once, malformed ones left out: what the policy's toServices resolve
 * against at startup, before the manager (which needs the node's addresses) follows them.
 */
export async function readServiceRecords(store: KvStore): Promise<ServiceSpec[]> {
  const out: ServiceSpec[] = [];
  for (const e of await store.list(SERVICE_PREFIX)) {
    const s = parseRecord(e.key, e.value);
    if (s) out.push(s);
  }
  return out.sort((a, b) => a.id - b.id);
}

export class ServiceManager {
  readonly #store: KvStore;
  readonly #sink: ServiceSink | undefined;
  readonly #log: Logger;
  readonly #podCidrs: string[];
  readonly #nodePortRange: { min: number; max: number };
  readonly #nodePortAddresses: string[];
  readonly #onChange: ((services: readonly ServiceSpec[]) => Promise<void>) | undefined;
  readonly #onBackendsRemoved: ((removed: RemovedBackend[]) => Promise<void>) | undefined;
  readonly #records = new Map<number, ServiceSpec>();
  readonly #serial = new Serial();
  /** The pairs of the last successful write (before the first: what the kernel held). */
  #pairs = new Map<string, RemovedBackend>();
  #heldRead = false;

  constructor(o: {
    store: KvStore;
    sink?: ServiceSink;
    log: Logger;
    podCidrs?: string[];
    /** The nodePort values allowed (--node-port-range). */
    nodePortRange?: { min: number; max: number };
    /** This node's addresses that serve NodePort frontends (its node IP). */
    nodePortAddresses?: string[];
    /** Called with the records after every change (the policy's toServices follow them). */
    onChange?: (services: readonly ServiceSpec[]) => Promise<void>;
    /** Called after a write with the pairs it removed (the socket LB's termination). */
    onBackendsRemoved?: (removed: RemovedBackend[]) => Promise<void>;
  }) {
    this.#store = o.store;
    this.#sink = o.sink;
    this.#log = o.log;
    this.#podCidrs = o.podCidrs ?? [];
    this.#nodePortRange = o.nodePortRange ?? DEFAULT_NODE_PORT_RANGE;
    this.#nodePortAddresses = o.nodePortAddresses ?? [];
    this.#onChange = o.onChange;
    this.#onBackendsRemoved = o.onBackendsRemoved;
  }

  list(): ServiceSpec[] {
    return [...this.#records.values()].sort((a, b) => a.id - b.id);
  }

  get(id: number): ServiceSpec | undefined {
    return this.#records.get(id);
  }

  /** Lists and watches `cilia/services/`; `ready` settles once the first listing is applied. */
  follow(o: { signal: AbortSignal }): PrefixWatch {
    return watchPrefix(this.#store, SERVICE_PREFIX, {
      snapshot: async (entries) => {
        this.#records.clear();
        for (const e of entries) this.#take(e.key, e.value);
        await this.#applyOrRetry(o.signal);
      },
      event: async (e) => {
        if (e.type === "put") this.#take(e.entry.key, e.entry.value);
        else this.#records.delete(Number(e.key.slice(SERVICE_PREFIX.length)));
        await this.#applyOrRetry(o.signal);
      },
    }, { signal: o.signal, log: this.#log });
  }

  /** Validates, stores and applies a record; an existing frontend (or id) is replaced. */
  upsert(input: ServiceInput): Promise<{ service: ServiceSpec; created: boolean }> {
    return this.#serial.run(async () => {
      const parsed = ServiceInputSchema.parse(input);
      for (const ip of [parsed.frontend.ip, ...(parsed.loadBalancerIPs ?? [])]) {
        const clash = this.#podCidrs.find((c) => inCidr(ip, c));
        if (clash) {
          throw new ServiceError(
            "invalid",
            `Invalid frontend "${ip}": it is inside the pod CIDR "${clash}"`,
          );
        }
      }
      const existing = this.list().find((s) =>
        frontendText(s) === frontendText({ frontend: parsed.frontend })
      );
      if (parsed.id !== undefined && existing && existing.id !== parsed.id) {
        throw new ServiceError(
          "invalid",
          `Frontend "${
            frontendText(existing)
          }" belongs to service ${existing.id}, not ${parsed.id}`,
        );
      }
      const id = parsed.id ?? existing?.id ?? this.#freeId();
      const nodePort = parsed.type === "ClusterIP"
        ? undefined
        : this.#nodePort(id, parsed.frontend, parsed.nodePort ?? existing?.nodePort);
      let service: ServiceSpec;
      try {
        service = normaliseService({ ...parsed, id, ...(nodePort ? { nodePort } : {}) });
      } catch (err) {
        throw new ServiceError("invalid", (err as Error).message);
      }
      // Decided before the write: the store's watch may deliver this very record first.
      const created = !this.#records.has(id);
      await this.#store.put(`${SERVICE_PREFIX}${id}`, enc.encode(JSON.stringify(service)));
      this.#records.set(id, service);
      await this.#apply();
      this.#log.info(created ? "service created" : "service updated", {
        id,
        frontend: frontendText(service),
        backends: service.backends.length,
      });
      return { service, created };
    });
  }

  delete(id: number): Promise<ServiceSpec> {
    return this.#serial.run(async () => {
      const s = this.#records.get(id);
      if (!s) throw new ServiceError("not_found", `Service ${id} does not exist`);
      await this.#store.delete(`${SERVICE_PREFIX}${id}`);
      this.#records.delete(id);
      await this.#apply();
      this.#log.info("service deleted", { id, frontend: frontendText(s) });
      return s;
    });
  }

  /**
   * A nodePort in range and not used by another service of the protocol and address family (the
   * lowest free): a dual-stack Service's IPv4 and IPv6 records share one, as in Kubernetes.
   */
  #nodePort(
    id: number,
    frontend: { ip: string; protocol: "TCP" | "UDP" },
    want: number | undefined,
  ): number {
    const { min, max } = this.#nodePortRange;
    const { protocol } = frontend, family = ipFamily(frontend.ip);
    const used = new Map(
      this.list().filter((s) =>
        s.id !== id && s.frontend.protocol === protocol && s.nodePort &&
        ipFamily(s.frontend.ip) === family
      ).map((s) => [s.nodePort!, s.id]),
    );
    if (want !== undefined) {
      if (want < min || want > max) {
        throw new ServiceError(
          "invalid",
          `Invalid nodePort ${want}: expected ${min}-${max} (--node-port-range)`,
        );
      }
      const other = used.get(want);
      if (other !== undefined) {
        throw new ServiceError(
          "invalid",
          `Invalid nodePort ${want}: service ${other} already uses it for ${protocol}`,
        );
      }
      return want;
    }
    for (let p = min; p <= max; p++) if (!used.has(p)) return p;
    throw new ServiceError("invalid", `Cannot allocate a nodePort: all of ${min}-${max} in use`);
  }

  #freeId(): number {
    for (let id = 1; id <= MAX_SERVICE_ID; id++) if (!this.#records.has(id)) return id;
    throw new ServiceError("invalid", `Cannot create a service: all ${MAX_SERVICE_ID} ids in use`);
  }

  /** A stored record; a malformed one is skipped with a warning (never crashes the agent). */
  #take(key: string, value: Uint8Array): void {
    const s = parseRecord(key, value);
    if (s === undefined) {
      this.#log.warn("ignoring a malformed service record", { key });
      return;
    }
    this.#records.set(s.id, s);
  }

  /** Watch changes: a failed write is logged and retried (1 s) until it succeeds. */
  async #applyOrRetry(signal: AbortSignal): Promise<void> {
    try {
      await this.#apply();
    } catch (err) {
      this.#log.error("cannot write services to the datapath; retrying", { error: err });
      const t = setTimeout(() => {
        if (!signal.aborted) this.#serial.run(() => this.#applyOrRetry(signal));
      }, 1000);
      signal.addEventListener("abort", () => clearTimeout(t), { once: true });
    }
  }

  async #apply(): Promise<void> {
    try {
      await this.#onChange?.(this.list());
    } catch (err) {
      this.#log.error("cannot hand the services to the policy", { error: err });
    }
    const services = this.list();
    if (!this.#heldRead && this.#onBackendsRemoved && this.#sink?.heldBackendPairs) {
      this.#heldRead = true;
      try {
        this.#pairs = new Map((await this.#sink.heldBackendPairs()).map((r) => [pairText(r), r]));
      } catch (err) {
        this.#log.warn(
          "cannot read the service pairs the datapath holds: connections to backends removed while the agent was down are not ended",
          { error: err },
        );
      }
    }
    await this.#sink?.applyServices(services, { nodePortAddresses: this.#nodePortAddresses });
    const pairs = backendPairs(services);
    const removed = removedPairs(this.#pairs, pairs);
    this.#pairs = pairs;
    if (removed.length === 0 || !this.#onBackendsRemoved) return;
    try {
      await this.#onBackendsRemoved(removed);
    } catch (err) {
      this.#log.warn("cannot end the connections of removed backends", {
        error: err,
        backends: removed.map((r) => `${frontendText(r)} → ${backendText(r.backend)}`),
      });
    }
  }
}
