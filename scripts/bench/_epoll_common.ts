// What the L7 I/O prototype's Workers (issue 10; `bench l7 --io-prototype`) share: this thread's
// libc, errno view, read buffer and one epoll set driven through pre-made pointers (hot calls are
// V8 fast calls), non-blocking accept and connect with TCP_NODELAY, the policy engine with the
// prototype's two endpoints, and the flows batched back to the main thread. Module state is per
// thread: each Worker that imports it gets its own. A measurement tool, not the proxy.
import {
  AF_INET,
  AF_INET6,
  EINPROGRESS,
  EPOLL_EVENT_SIZE,
  IPPROTO_TCP,
  libc,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  TCP_NODELAY,
} from "../../agent/sys/sockets_ffi.ts";
import {
  compilePolicies,
  type HttpRequest,
  PolicyEngine,
  SimCluster,
} from "../../policy-wasm/mod.ts";

export const S = libc();
/** This thread's errno: `errnoView.getInt32()` right after a failed call. */
export const errnoView = new Deno.UnsafePointerView(S.__errno_location()!);
export const BUF = 65536, EV_MAX = 256;
/** The one buffer every read of this thread goes into, and its pointer. */
export const scratch = new Uint8Array(BUF);
export const scratchP = Deno.UnsafePointer.of(scratch)!;
const evBuf = new Uint8Array(EPOLL_EVENT_SIZE * EV_MAX);
const evP = Deno.UnsafePointer.of(evBuf)!;
const evDv = new DataView(evBuf.buffer);
const ctlBuf = new Uint8Array(EPOLL_EVENT_SIZE);
const ctlP = Deno.UnsafePointer.of(ctlBuf)!;
const ctlDv = new DataView(ctlBuf.buffer);
const oneP = Deno.UnsafePointer.of(new Int32Array([1]))!;
let ep = -1;

/** Creates this thread's epoll set (one per thread). */
export function epollOpen(): void {
  ep = S.epoll_create1(SOCK_CLOEXEC);
}

export function epollClose(): void {
  S.close(ep);
  ep = -1;
}

/** epoll_ctl on this thread's set. */
export function ctl(op: number, fd: number, events: number): void {
  ctlDv.setUint32(0, events >>> 0, true);
  ctlDv.setUint32(4, fd, true);
  S.epoll_ctl_p(ep, op, fd, ctlP);
}

/** epoll_wait for at most `ms`; the events are then read with eventsAt(i) and fdAt(i). */
export const epollWait = (ms: number): number => S.epoll_wait_p(ep, evP, EV_MAX, ms);
export const eventsAt = (i: number): number => evDv.getUint32(i * EPOLL_EVENT_SIZE, true);
export const fdAt = (i: number): number => evDv.getUint32(i * EPOLL_EVENT_SIZE + 4, true);

/** The next connection on a non-blocking listener, with TCP_NODELAY; -1 when there is none. */
export function acceptNoDelay(listenFd: number): number {
  const fd = S.accept4(listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd >= 0) S.setsockopt_p(fd, IPPROTO_TCP, TCP_NODELAY, oneP, 4);
  return fd;
}

/**
 * A non-blocking TCP_NODELAY connect to the sockaddr `sa` (its first `len` bytes): the fd and
 * whether it connected at once (else it is in progress), or an error text (no fd left open).
 */
export function connectNoDelay(
  sa: Uint8Array,
  len: number,
): { fd: number; connected: boolean } | string {
  const family = sa[0] === AF_INET6 ? AF_INET6 : AF_INET;
  const fd = S.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return `socket() failed: errno ${errnoView.getInt32()}`;
  S.setsockopt_p(fd, IPPROTO_TCP, TCP_NODELAY, oneP, 4);
  const r = S.connect(fd, sa, len);
  if (r < 0 && errnoView.getInt32() !== EINPROGRESS) {
    const e = errnoView.getInt32();
    S.close(fd);
    return `connect() failed: errno ${e}`;
  }
  return { fd, connected: r === 0 };
}

/** The policy engine of a Worker, loaded with the prototype's policy: client → server:80. */
export class PrototypeJudge {
  readonly #engine: PolicyEngine;
  readonly #server: number;
  readonly #client: number;
  /** The rule of the last verdict (judge()). */
  rule = -1;

  private constructor(engine: PolicyEngine, server: number, client: number) {
    this.#engine = engine, this.#server = server, this.#client = client;
  }

  static async create(policy: string): Promise<PrototypeJudge> {
    const engine = await PolicyEngine.create();
    const cluster = new SimCluster({
      endpoints: ["client", "server"].map((app) => ({ name: app, labels: { app } })),
    });
    cluster.load(engine, compilePolicies({ text: policy }).spec, engine.options);
    return new PrototypeJudge(
      engine,
      cluster.endpoint("server")!.id,
      cluster.endpoint("client")!.identity,
    );
  }

  /** Whether the client may make this request of the server's port 80 (its rule in `rule`). */
  judge(http: HttpRequest): boolean {
    const r = this.#engine.judgeHttp({
      endpoint: this.#server,
      direction: "ingress",
      peer: this.#client,
      proto: 6,
      port: 80,
      http,
    });
    this.rule = r.l7.rule;
    return r.verdict === "allow" || (r.verdict === "redirect" && r.l7.status === "allowed");
  }

  close(): void {
    this.#engine.close();
  }
}

const FLOW_BATCH = 1024;
const newFlows = () => ({
  n: 0,
  allowed: 0,
  denied: 0,
  rules: new Int32Array(FLOW_BATCH),
  codes: new Uint16Array(FLOW_BATCH),
  latencyMs: new Float32Array(FLOW_BATCH),
  paths: [] as string[],
});
let flows = newFlows();

/** How many flows wait to be posted. */
export const flowsWaiting = (): number => flows.n;

/** One request's flow (rule -1: denied); a full batch is posted at once. */
export function addFlow(
  f: { rule: number; code: number; latencyMs: number; path: string; allowed: boolean },
): void {
  const i = flows.n++;
  flows.rules[i] = f.rule;
  flows.codes[i] = f.code;
  flows.latencyMs[i] = f.latencyMs;
  flows.paths.push(f.path);
  if (f.allowed) flows.allowed++;
  else flows.denied++;
  if (flows.n === FLOW_BATCH) postFlows();
}

/** Posts the flows so far to the main thread as `{flows}` and starts a new batch. */
export function postFlows(): void {
  const n = flows.n;
  self.postMessage({
    flows: {
      ...flows,
      rules: flows.rules.subarray(0, n),
      codes: flows.codes.subarray(0, n),
      latencyMs: flows.latencyMs.subarray(0, n),
    },
  });
  flows = newFlows();
}
