// The L7 I/O prototype's process (issue 10; `bench l7 --io-prototype`):
// `deno run -A _epoll_forwarder.ts PORT ORIGIN_IP:PORT forward|engine|cache|conn|machine`. The main thread makes the
// listener through FFI (fds are process-wide) and hands its number to the Worker
// (_epoll_forwarder_worker.ts), which serves every connection in its own epoll loop; flows come
// back in batches. Prints `ready` once it accepts, and on SIGTERM or SIGINT one JSON line
// {requests, flows, allowed, denied} before it exits.
import { closeLibc, libc, listenTcp } from "../../agent/sys/sockets_ffi.ts";
import type { ForwarderStart } from "./_epoll_forwarder_worker.ts";

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
              - {method: GET, path: /public}
`;

const [portArg, originArg = "", mode = "engine"] = Deno.args;
const colon = originArg.lastIndexOf(":");
if (!portArg || colon < 0 || !["forward", "engine", "cache", "conn", "machine"].includes(mode)) {
  console.error("Usage: _epoll_forwarder.ts PORT ORIGIN_IP:PORT forward|engine|cache|conn|machine");
  Deno.exit(2);
}
const listener = listenTcp("0.0.0.0", Number(portArg));
const stop = new SharedArrayBuffer(4);
const workerFile = mode === "conn"
  ? "./_epoll_conn_worker.ts"
  : mode === "machine"
  ? "./_epoll_machine_worker.ts"
  : "./_epoll_forwarder_worker.ts";
const worker = new Worker(new URL(workerFile, import.meta.url), {
  type: "module",
});
const totals = { requests: 0, flows: 0, allowed: 0, denied: 0 };
const end = () => Atomics.store(new Int32Array(stop), 0, 1);
Deno.addSignalListener("SIGTERM", end);
Deno.addSignalListener("SIGINT", end);
worker.onmessage = (e) => {
  const m = e.data;
  if (m.flows) {
    totals.flows += m.flows.n;
    totals.allowed += m.flows.allowed;
    totals.denied += m.flows.denied;
  } else if (m.ready) console.log("ready");
  else if (m.done || m.error) {
    if (m.error) console.error(m.error);
    totals.requests = m.done?.requests ?? 0;
    console.log(JSON.stringify(totals));
    worker.terminate();
    libc().close(listener.fd);
    closeLibc();
    Deno.exit(m.error ? 1 : 0);
  }
};
const start: ForwarderStart = {
  listenFd: listener.fd,
  origin: { ip: originArg.slice(0, colon), port: Number(originArg.slice(colon + 1)) },
  mode: mode as ForwarderStart["mode"],
  stop,
  policy: POLICY,
};
worker.postMessage(start);
