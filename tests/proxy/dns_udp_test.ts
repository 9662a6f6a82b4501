// The DNS proxy Worker's pieces that need no kernel datapath: the sockaddr codec of
// agent/sys/sockets_ffi.ts, and the upstream legs (_dns_udp_legs.ts) against a real UDP server on
// loopback: the answer is handed on with the pod's id restored, datagrams from another source or
// with an id not in flight are ignored, a query without an answer is sent again and fails at its
// deadline, an idle
// leg is closed and its proxy-NAT entry deleted; the batched receive (_dns_mmsg.ts: every queued
// datagram in one call, with its sender and arrival time); and what the Worker's caches rely on:
// the engine's revision and DnsCache.expiresOf(). The Worker itself runs in tests/e2e/dns_test.ts.
import assert from "node:assert/strict";
import * as S from "../../agent/sys/sockets_ffi.ts";
import { DnsUdpLegs, type Pending, sameAddr } from "../../agent/proxy/_dns_udp_legs.ts";
import { parseQuery } from "../../agent/proxy/dns_message.ts";
import { DnsCache } from "../../agent/proxy/dns_cache.ts";
import { Mmsg, SLOTS } from "../../agent/proxy/_dns_mmsg.ts";
import { PolicyEngine } from "@cilia/policy-wasm";
import { encodeQuery } from "../../scripts/bench/_dns_load.ts";
import { until } from "../helpers/until.ts";

/** The next datagram on `conn` (a copy), or an error naming `what` after `ms`. */
async function receiveWithin(
  conn: Deno.DatagramConn,
  buf: Uint8Array,
  what: string,
  ms = 2000,
): Promise<[Uint8Array, Deno.Addr]> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const got = conn.receive(buf);
  got.catch(() => {}); // closed in `finally` after a timeout
  try {
    const [m, from] = await Promise.race([
      got,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`No datagram for ${what} in ${ms} ms`)), ms);
      }),
    ]);
    return [m.slice(), from];
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("encodeSockaddr() and decodeSockaddr() round-trip IPv4 and IPv6", async (t) => {
  const cases: [string, string][] = [
    ["10.1.2.3", "10.1.2.3"],
    ["2001:db8::1", "2001:db8::1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["::", "::"],
    ["fd00:0:0:0:0:0:0:a", "fd00::a"],
    ["2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:6"],
  ];
  S.acquire();
  try {
    for (const [ip, want] of cases) {
      await t.step(ip, () => {
        const b = new Uint8Array(S.SOCKADDR_SIZE);
        const len = S.encodeSockaddr(b, ip, 5353);
        assert.equal(len, ip.includes(":") ? 28 : 16);
        assert.deepEqual(S.decodeSockaddr(b), { ip: want, port: 5353 });
      });
    }
    assert.throws(() => S.encodeSockaddr(new Uint8Array(28), "10.1.2", 1), /Invalid IPv4/);
    assert.throws(() => S.encodeSockaddr(new Uint8Array(28), "1::2::3", 1), /Invalid IPv6/);
    const a = new Uint8Array(28), b = new Uint8Array(28);
    S.encodeSockaddr(a, "10.0.0.1", 53);
    S.encodeSockaddr(b, "10.0.0.1", 54);
    assert.equal(sameAddr(a, b), false, "another port");
    S.encodeSockaddr(b, "10.0.0.1", 53);
    assert.equal(sameAddr(a, b), true);
  } finally {
    S.release();
  }
});

Deno.test("DnsUdpLegs: answers by id from the leg's server only, deadlines, idle close", async () => {
  S.acquire();
  const server = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const stray = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const port = (server.addr as Deno.NetAddr).port;
  const c = S.libc();
  const ep = c.epoll_create1(0);
  const nat: string[] = [];
  const answers: [Pending, Uint8Array][] = [], fails: [Pending, string][] = [];
  const legs = new DnsUdpLegs({
    maps: {
      writeNat: (n) => void nat.push(`+${n.server.ip}:${n.server.port}/${n.clientIp}`),
      deleteNat: (n) => void nat.push(`-${n.server.ip}:${n.server.port}`),
    },
    gateway: "127.0.0.1",
    gateway6: "",
    receiveBuffer: 1 << 20,
    timeoutMs: 300,
    resendMs: 60,
    onAnswer: (p, b) => void answers.push([p, b.slice()]), // b: valid during the call only
    onFail: (p, e) => void fails.push([p, e]),
  });
  legs.epoll = ep;
  const pending = (id: number): Pending => {
    const msg = encodeQuery(id, "api.example.com");
    return {
      fd: -1,
      addr: new Uint8Array(),
      msg,
      o: { ip: "127.0.0.1", port, epId: 7, dir: 2, srcIdentity: 1000, dstIdentity: 2, cookie: 1 },
      client: { ip: "10.0.0.5", port: 40000 },
      started: performance.now(),
      q: parseQuery(msg),
    };
  };
  const evs = new Uint8Array(S.EPOLL_EVENT_SIZE * 8);
  const poll = (ms: number) => {
    const n = c.epoll_wait(ep, evs, 8, ms);
    const v = new DataView(evs.buffer);
    for (let i = 0; i < n; i++) legs.drain(v.getUint32(S.EPOLL_EVENT_SIZE * i + 4, true));
  };
  try {
    const p1 = pending(0x1234), p2 = pending(0x4321);
    assert.equal(legs.forward(p1), undefined);
    assert.equal(legs.forward(p2), undefined);
    assert.deepEqual(nat, [`+127.0.0.1:${port}/10.0.0.5`], "one leg, one NAT entry");
    const buf = new Uint8Array(512);
    const [q1, from] = await receiveWithin(server, buf, "the first query");
    const [q2] = await receiveWithin(server, buf, "the second query");
    assert.notEqual((q1[0]! << 8) | q1[1]!, (q2[0]! << 8) | q2[1]!, "ids differ on one leg");
    // From another source, and with an id not in flight: ignored.
    await stray.send(q1, from);
    const bad = q1.slice();
    bad[0] = bad[0]! ^ 0xff;
    await server.send(bad, from);
    await server.send(q1, from); // the real one (an echo is enough: legs do not parse)
    await until("the answer", () => (poll(0), answers.length >= 1));
    poll(20); // nothing more comes: the stray and the wrong id were ignored
    assert.equal(answers.length, 1);
    assert.equal(answers[0]![0], p1);
    assert.deepEqual([answers[0]![1][0], answers[0]![1][1]], [0x12, 0x34], "the pod's id");
    assert.equal(legs.inflight, 1);
    // p2 is never answered: sent again (same bytes) after 60 ms and 120 ms more, then it fails
    // at its deadline (300 ms). The test drives expire() as the Worker's loop does.
    const resent: Uint8Array[] = [], at: number[] = [];
    for (let i = 0; i < 2; i++) {
      let got: Uint8Array | undefined;
      const next = receiveWithin(server, buf, `resend ${i + 1}`).then(([m]) => got = m);
      await until(`resend ${i + 1}`, () => (legs.expire(performance.now()), got !== undefined));
      await next;
      resent.push(got!);
      at.push(performance.now() - p2.started);
    }
    assert.deepEqual(resent, [q2, q2]);
    assert.ok(at[0]! >= 60 && at[1]! >= 180, `resent too early: at ${at.map(Math.round)} ms`);
    assert.equal(fails.length, 0, "not failed before the deadline");
    await until("the deadline", () => (legs.expire(performance.now()), fails.length > 0));
    assert.ok(performance.now() - p2.started >= 300, "failed before its deadline");
    assert.equal(fails.length, 1);
    assert.equal(fails[0]![0], p2);
    assert.match(fails[0]![1], /no answer from 127\.0\.0\.1:\d+ in 300 ms/);
    legs.sweepIdle(performance.now() + 60_000, 30_000);
    assert.deepEqual(nat.at(-1), `-127.0.0.1:${port}`, "idle leg closed, NAT entry deleted");
    assert.equal(legs.forward(pending(1)), undefined, "a new leg on the next query");
    assert.equal(nat.length, 3);
  } finally {
    legs.close();
    c.close(ep);
    server.close();
    stray.close();
    S.release();
  }
});

Deno.test("DnsCache.expiresOf() is the earliest expiry, none when a record is missing", () => {
  const cache = new DnsCache({ minTtl: 0, maxIpsPerName: 10 });
  const at = 1_000_000;
  cache.learn(7, ["a.example.com.", "b.example.com."], [{ ip: "192.0.2.1", ttl: 60 }], at);
  cache.learn(7, ["a.example.com."], [{ ip: "192.0.2.2", ttl: 30 }], at);
  const names = ["a.example.com."];
  assert.equal(cache.expiresOf(7, names, [{ ip: "192.0.2.1" }, { ip: "192.0.2.2" }]), at + 30_000);
  assert.equal(
    cache.expiresOf(7, ["a.example.com.", "b.example.com."], [{ ip: "192.0.2.1" }]),
    at + 60_000,
  );
  assert.equal(cache.expiresOf(7, ["b.example.com."], [{ ip: "192.0.2.2" }]), undefined);
  assert.equal(cache.expiresOf(8, names, [{ ip: "192.0.2.1" }]), undefined, "another endpoint");
});

Deno.test("PolicyEngine.revision moves, and onChange() fires, on every change only", async () => {
  const engine = await PolicyEngine.create();
  try {
    let calls = 0;
    const off = engine.onChange(() => calls++);
    const r0 = engine.revision;
    engine.upsertIdentities([{ id: 4000, labels: ["k8s:x=y"] }]);
    engine.setEndpoints([]);
    engine.updateIpcache([{ prefix: "192.0.2.0/24", identity: 4000 }]);
    assert.equal(engine.lookupIp("192.0.2.1"), 4000); // a query: no change
    engine.upsertIdentities([]); // no change
    assert.equal(engine.revision - r0, 3);
    assert.equal(calls, 3);
    off();
    engine.removeIdentities([4000]);
    assert.equal(calls, 3, "unsubscribed");
    assert.equal(engine.revision - r0, 4);
  } finally {
    engine.close();
  }
});

Deno.test("Mmsg: one receive() reads every queued datagram with its sender and arrival", async () => {
  S.acquire();
  const sock = S.bindUdp("127.0.0.1", 0, { receiveBuffer: 1 << 20 });
  const rx = new Mmsg({ timestamps: true });
  const a = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const b = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const to = { transport: "udp" as const, hostname: "127.0.0.1", port: sock.port };
  try {
    assert.equal(rx.timestamp(sock.fd), true);
    assert.equal(rx.receive(sock.fd), -1, "nothing queued");
    assert.equal(S.errno(), S.EAGAIN);
    const before = Date.now() * 1000;
    const total = SLOTS + 4;
    for (let i = 0; i < total; i++) {
      const body = new Uint8Array(i === 3 ? 4000 : 20).fill(i);
      await (i % 2 ? b : a).send(body, to);
    }
    const ports = [a, b].map((c) => (c.addr as Deno.NetAddr).port);
    const seen: number[] = [];
    for (const want of [SLOTS, 4]) {
      const n = rx.receive(sock.fd);
      assert.equal(n, want, "a full batch, then the rest");
      for (let i = 0; i < n; i++) {
        const k = seen.length;
        const d = rx.data(i)!;
        assert.equal(d.length, k === 3 ? 4000 : 20);
        assert.ok(d.every((x) => x === k), `datagram ${k} in order, whole`);
        assert.deepEqual(S.decodeSockaddr(rx.from(i)), { ip: "127.0.0.1", port: ports[k % 2] });
        const at = rx.arrival(i);
        assert.ok(at >= before - 1000 && at <= Date.now() * 1000 + 1000, `arrival ${at}`);
        seen.push(k);
      }
    }
    assert.equal(seen.length, total);
    assert.equal(rx.receive(sock.fd), -1, "drained");
  } finally {
    a.close();
    b.close();
    rx.close();
    S.libc().close(sock.fd);
    S.release();
  }
});
