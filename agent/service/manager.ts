// Service records in the kvstore (`cilia/services/<id>`, JSON) and their way into this node's
// datapath: the API upserts and deletes records (one per frontend), every agent follows the
// prefix and hands the whole set to its sink (KernelSink.applyServices writes only the diff). A
// change is applied locally before the call returns, so a service works when the command
// returns; the watch makes every other agent converge. It decides no backend (the kernel does).
import type { KvStore } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import { type PrefixWatch, watchPrefix } from "../_watch.ts";
import { Serial } from "../_serial.ts";
import {
  frontendText,
  inCidr,
  MAX_SERVICE_ID,
  normaliseService,
  type ServiceInput,
  ServiceInputSchema,
  type ServiceSpec,
} from "./spec.ts";

export const SERVICE_PREFIX = "cilia/services/";

export interface ServiceSink {
  applyServices(services: readonly ServiceSpec[]): Promise<void>;
}

/** A request the manager refuses (the API turns it into a 400 or 404). */
export class ServiceError extends Error {
  override name = "ServiceError";
  constructor(readonly code: "invalid" | "not_found", message: string) {
    super(message);
  }
}

const enc = new TextEncoder(), dec = new TextDecoder();

export class ServiceManager {
  readonly #store: KvStore;
  readonly #sink: ServiceSink | undefined;
  readonly #log: Logger;
  readonly #podCidrs: string[];
  readonly #records = new Map<number, ServiceSpec>();
  readonly #serial = new Serial();

  constructor(o: { store: KvStore; sink?: ServiceSink; log: Logger; podCidrs?: string[] }) {
    this.#store = o.store;
    this.#sink = o.sink;
    this.#log = o.log;
    this.#podCidrs = o.podCidrs ?? [];
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
      const clash = this.#podCidrs.find((c) => inCidr(parsed.frontend.ip, c));
      if (clash) {
        throw new ServiceError(
          "invalid",
          `Invalid frontend "${parsed.frontend.ip}": it is inside the pod CIDR "${clash}"`,
        );
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
      let service: ServiceSpec;
      try {
        service = normaliseService({ ...parsed, id });
      } catch (err) {
        throw new ServiceError("invalid", (err as Error).message);
      }
      await this.#store.put(`${SERVICE_PREFIX}${id}`, enc.encode(JSON.stringify(service)));
      const created = !this.#records.has(id);
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

  #freeId(): number {
    for (let id = 1; id <= MAX_SERVICE_ID; id++) if (!this.#records.has(id)) return id;
    throw new ServiceError("invalid", `Cannot create a service: all ${MAX_SERVICE_ID} ids in use`);
  }

  /** A stored record; a malformed one is skipped with a warning (never crashes the agent). */
  #take(key: string, value: Uint8Array): void {
    const id = Number(key.slice(SERVICE_PREFIX.length));
    let json: unknown;
    try {
      json = JSON.parse(dec.decode(value));
    } catch {
      json = undefined;
    }
    const r = ServiceInputSchema.safeParse(json);
    if (!r.success || r.data.id !== id) {
      this.#log.warn("ignoring a malformed service record", { key });
      return;
    }
    this.#records.set(id, normaliseService({ ...r.data, id }));
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
    await this.#sink?.applyServices(this.list());
  }
}
