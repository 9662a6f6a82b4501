// NodeHealth (agent/node/health.ts) on loopback addresses: two nodes probe each other and find
// each other reachable with a round trip; once one stops answering, the other says unreachable
// within an interval and a timeout; a node discovery no longer lists is forgotten; a stranger's
// datagram is no answer; nodes on different health ports (--cluster-health-port) never answer
// each other.
import assert from "node:assert/strict";
import { Logger } from "../../agent/log.ts";
import { NodeHealth } from "../../agent/node/health.ts";
import { eventually } from "./_fixture.ts";

const PORT = 34240 + Math.floor(Math.random() * 1000);

Deno.test("NodeHealth: reachable while a peer answers, unreachable once it stops", async () => {
  const log = new Logger({ level: "error" });
  const timing = { port: PORT, intervalMs: 100, timeoutMs: 80 };
  let peersOfA = [{ name: "b", ip: "127.0.0.2" }, { name: "self", ip: "127.0.0.1" }];
  const a = new NodeHealth({ ip: "127.0.0.1", peers: () => peersOfA, log, ...timing });
  let b: NodeHealth | undefined = new NodeHealth({
    ip: "127.0.0.2",
    peers: () => [{ name: "a", ip: "127.0.0.1" }],
    log,
    ...timing,
  });
  try {
    await eventually("a finds b reachable", () => a.of("b")?.reachable === true, 3000);
    assert.ok((a.of("b")?.rttMs ?? -1) >= 0, "a round trip");
    await eventually("b finds a reachable", () => b!.of("a")?.reachable === true, 3000);
    assert.equal(a.of("self"), undefined, "its own address is never probed");

    // A stranger on b's address and port sends garbage to a: not an answer.
    await b.close();
    b = undefined;
    const stranger = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.2", port: PORT });
    try {
      await eventually("a finds b unreachable", () => a.of("b")?.reachable === false, 3000);
      await stranger.send(new Uint8Array(9), {
        transport: "udp",
        hostname: "127.0.0.1",
        port: PORT,
      });
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(a.of("b")?.reachable, false, "still unreachable");
    } finally {
      stranger.close();
    }

    peersOfA = [];
    await eventually("b forgotten", () => a.of("b") === undefined, 3000);
  } finally {
    await a.close();
    await b?.close();
  }
});

Deno.test("NodeHealth: nodes on different health ports find each other unreachable", async () => {
  // --cluster-health-port is one per cluster (node records do not carry it): a node that answers
  // on another port than its peers probe is unreachable for them, and they for it. Nothing
  // else depends on it (the datapath never reads reachability).
  const log = new Logger({ level: "error" });
  const timing = { intervalMs: 100, timeoutMs: 80 };
  const a = new NodeHealth({
    ip: "127.0.0.1",
    port: PORT + 1,
    peers: () => [{ name: "b", ip: "127.0.0.2" }],
    log,
    ...timing,
  });
  const b = new NodeHealth({
    ip: "127.0.0.2",
    port: PORT + 2,
    peers: () => [{ name: "a", ip: "127.0.0.1" }],
    log,
    ...timing,
  });
  try {
    await eventually("a finds b unreachable", () => a.of("b")?.reachable === false, 3000);
    await eventually("b finds a unreachable", () => b.of("a")?.reachable === false, 3000);
    // Several rounds later, still no answer either way.
    await new Promise((r) => setTimeout(r, 350));
    assert.deepEqual([a.of("b")?.reachable, b.of("a")?.reachable], [false, false]);
  } finally {
    await a.close();
    await b.close();
  }
});
