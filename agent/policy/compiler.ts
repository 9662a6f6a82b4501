/**
 * Policy compilation that does not stall the agent. `compilePolicies` (YAML, zod, translation)
 * and `splitDocuments` are pure and synchronous, and take seconds for thousands of rules: run on
 * the event loop they stall every API call, `/v1/status` and `/v1/healthz` included. Sources
 * larger than `workerMinBytes` are compiled in a Worker (compile_worker.ts), started on first
 * use and stopped after `idleMs` without work; small ones are compiled in place, as before.
 * Both paths give the same result and throw the same PolicyValidationError.
 */

import {
  type CompileOptions,
  compilePolicies,
  type PolicySource,
  type PolicySpec,
  PolicyValidationError,
  type ServiceRef,
  type ValidationIssue,
} from "@cilia/policy-wasm";
import { type PolicyDocument, splitDocuments } from "./documents.ts";

export interface Compiled {
  spec: PolicySpec;
  warnings: ValidationIssue[];
  /** The sources split into one document per policy (with `split`). */
  docs?: PolicyDocument[];
}

export interface CompileRequest {
  id: number;
  sources: PolicySource[];
  clusterName: string;
  split: boolean;
  services?: ServiceRef[];
}

export type CompileReply =
  | { id: number; ok: true; spec: PolicySpec; warnings: ValidationIssue[]; docs?: PolicyDocument[] }
  | { id: number; ok: false; name: string; message: string; issues?: ValidationIssue[] };

export interface PolicyCompilerOptions {
  clusterName: string;
  /** The agent's engine's regex check (in-place compiles). */
  regexCheck: NonNullable<CompileOptions["regexCheck"]>;
  /** The cluster's services as toServices sees them, read at each compile (none: offline). */
  services?: () => ServiceRef[];
  /** Sources at least this large (bytes of text, in total) go to the worker; default 64 KiB. */
  workerMinBytes?: number;
  /** The worker stops after this long without work; default 30 s. */
  idleMs?: number;
}

export class PolicyCompiler {
  readonly #o: PolicyCompilerOptions;
  #worker: Worker | undefined;
  #pending = new Map<number, (r: CompileReply) => void>();
  #next = 0;
  #idle: ReturnType<typeof setTimeout> | undefined;

  constructor(o: PolicyCompilerOptions) {
    this.#o = o;
  }

  /** Compiles (and with `split`, splits) `sources`; throws PolicyValidationError. */
  async compile(sources: PolicySource[], opts: { split?: boolean } = {}): Promise<Compiled> {
    const size = sources.reduce((n, s) => n + s.text.length, 0);
    if (size < (this.#o.workerMinBytes ?? 64 * 1024)) return this.#inPlace(sources, opts);
    const r = await this.#ask(sources, opts.split ?? false);
    if (r.ok) {
      return { spec: r.spec, warnings: r.warnings, ...(r.docs ? { docs: r.docs } : {}) };
    }
    if (r.issues) throw new PolicyValidationError(r.issues);
    const err = new Error(`Cannot compile the policy: ${r.message}`);
    err.name = r.name;
    throw err;
  }

  #inPlace(sources: PolicySource[], opts: { split?: boolean }): Compiled {
    const services = this.#o.services?.();
    const r = compilePolicies(sources, {
      clusterName: this.#o.clusterName,
      regexCheck: this.#o.regexCheck,
      ...(services ? { services } : {}),
    });
    const docs = opts.split ? sources.flatMap((s) => splitDocuments(s.text)) : undefined;
    return { spec: r.spec, warnings: r.warnings, ...(docs ? { docs } : {}) };
  }

  #ask(sources: PolicySource[], split: boolean): Promise<CompileReply> {
    clearTimeout(this.#idle);
    this.#idle = undefined;
    const worker = this.#worker ??= this.#start();
    const id = ++this.#next;
    const services = this.#o.services?.();
    const req: CompileRequest = {
      id,
      sources,
      clusterName: this.#o.clusterName,
      split,
      ...(services ? { services } : {}),
    };
    return new Promise((resolve) => {
      this.#pending.set(id, resolve);
      worker.postMessage(req);
    });
  }

  #start(): Worker {
    const w = new Worker(new URL("./compile_worker.ts", import.meta.url).href, {
      type: "module",
    });
    w.onmessage = (e: MessageEvent<CompileReply>) => {
      this.#pending.get(e.data.id)?.(e.data);
      this.#pending.delete(e.data.id);
      if (this.#pending.size === 0) this.#scheduleStop();
    };
    w.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      const message = `the compiler worker failed: ${e.message}`;
      for (const [id, resolve] of this.#pending) resolve({ id, ok: false, name: "Error", message });
      this.#pending.clear();
      this.#stop();
    };
    return w;
  }

  #scheduleStop(): void {
    const idle = setTimeout(() => this.#stop(), this.#o.idleMs ?? 30_000);
    Deno.unrefTimer(idle);
    this.#idle = idle;
  }

  #stop(): void {
    clearTimeout(this.#idle);
    this.#idle = undefined;
    this.#worker?.terminate();
    this.#worker = undefined;
  }

  /** Stops the worker; pending compiles fail. */
  close(): void {
    for (const [id, resolve] of this.#pending) {
      resolve({ id, ok: false, name: "Error", message: "the agent is stopping" });
    }
    this.#pending.clear();
    this.#stop();
  }
}
