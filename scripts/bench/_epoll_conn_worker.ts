// The Worker of the L7 I/O prototype's "conn" mode (issue 10; `bench l7 --io-prototype`): the
// proxy's own HTTP/1.1 connection code (serveHttpConnection: strict heads, path normalisation,
// keep-alive, pipelining, bodies, timeouts) over promise streams on raw sockets and one epoll loop
// (_epoll_streams.ts) instead of Deno's socket ops; judged by the policy engine in this Worker,
// flows batched back to the main thread. A measurement tool: no kernel maps, no proxy-NAT.
import { serveHttpConnection } from "../../agent/proxy/http_conn.ts";
import type { HttpRequest } from "../../policy-wasm/mod.ts";
import { addFlow, flowsWaiting, postFlows, PrototypeJudge } from "./_epoll_common.ts";
import { acceptOn, connectTcp, runLoop } from "./_epoll_streams.ts";
import type { ForwarderStart } from "./_epoll_forwarder_worker.ts";

let requests = 0;

async function start(m: ForwarderStart): Promise<void> {
  const judge = await PrototypeJudge.create(m.policy);
  const opts = {
    connect: () => Promise.resolve(connectTcp(m.origin.ip, m.origin.port)),
    judge: (req: HttpRequest) => judge.judge(req),
    onRequest: (rec: { allowed: boolean; url: string; code: number; latencyMs: number }) => {
      requests++;
      const { allowed, code, latencyMs } = rec;
      addFlow({ rule: allowed ? judge.rule : -1, code, latencyMs, path: rec.url, allowed });
    },
  };
  acceptOn(m.listenFd, (s) => void serveHttpConnection(s, opts));
  const timer = setInterval(() => flowsWaiting() > 0 && postFlows(), 50);
  self.postMessage({ ready: true });
  await runLoop(new Int32Array(m.stop));
  clearInterval(timer);
  if (flowsWaiting() > 0) postFlows();
  judge.close();
  self.postMessage({ done: { requests } });
}

self.onmessage = (e: MessageEvent<ForwarderStart>) => {
  start(e.data).catch((err) => self.postMessage({ error: String(err?.stack ?? err) }));
};
