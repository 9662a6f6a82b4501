// The Worker of the L7 I/O prototype's "conn" mode (issue 10; `bench l7 --io-prototype`): the
// proxy's own HTTP/1.1 connection code (serveHttpConnection: strict heads, path normalisation,
// keep-alive, pipelining, bodies, timeouts) over promise streams on raw sockets and one epoll loop
// (_epoll_streams.ts) instead of Deno's socket ops; judged by the policy engine in this Worker,
// flows batched back to the main thread. A measurement tool: no kernel maps, no proxy-NAT.
import { serveHttpConnection } from "../../agent/proxy/http_conn.ts";
import { compilePolicies, PolicyEngine, SimCluster } from "../../policy-wasm/mod.ts";
import { acceptOn, connectTcp, runLoop } from "./_epoll_streams.ts";
import type { ForwarderStart } from "./_epoll_forwarder_worker.ts";

const flows = { n: 0, allowed: 0, denied: 0, rules: new Int32Array(1024), paths: [] as string[] };
let requests = 0;

function postFlows(): void {
  self.postMessage({ flows: { ...flows, rules: flows.rules.subarray(0, flows.n) } });
  Object.assign(flows, { n: 0, allowed: 0, denied: 0, rules: new Int32Array(1024), paths: [] });
}

async function start(m: ForwarderStart): Promise<void> {
  const engine = await PolicyEngine.create();
  const cluster = new SimCluster({
    endpoints: ["client", "server"].map((app) => ({ name: app, labels: { app } })),
  });
  cluster.load(engine, compilePolicies({ text: m.policy }).spec, engine.options);
  const server = cluster.endpoint("server")!.id, client = cluster.endpoint("client")!.identity;
  let lastRule = -1;
  const opts = {
    connect: () => Promise.resolve(connectTcp(m.origin.ip, m.origin.port)),
    judge: (
      req: { method: string; path: string; host: string; headers: Record<string, string> },
    ) => {
      const r = engine.judgeHttp({
        endpoint: server,
        direction: "ingress",
        peer: client,
        proto: 6,
        port: 80,
        http: req,
      });
      lastRule = r.l7.rule;
      return r.verdict === "allow" || (r.verdict === "redirect" && r.l7.status === "allowed");
    },
    onRequest: (rec: { allowed: boolean; url: string }) => {
      requests++;
      flows.rules[flows.n++] = rec.allowed ? lastRule : -1;
      flows.paths.push(rec.url);
      if (rec.allowed) flows.allowed++;
      else flows.denied++;
      if (flows.n === flows.rules.length) postFlows();
    },
  };
  acceptOn(m.listenFd, (s) => void serveHttpConnection(s, opts));
  const timer = setInterval(() => flows.n > 0 && postFlows(), 50);
  self.postMessage({ ready: true });
  await runLoop(new Int32Array(m.stop));
  clearInterval(timer);
  if (flows.n > 0) postFlows();
  engine.close();
  self.postMessage({ done: { requests } });
}

self.onmessage = (e: MessageEvent<ForwarderStart>) => {
  start(e.data).catch((err) => self.postMessage({ error: String(err?.stack ?? err) }));
};
