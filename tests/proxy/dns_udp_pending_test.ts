// The DNS proxy Worker's pooled per-query state (agent/proxy/_dns_udp_pending.ts) with the real
// upstream legs (_dns_udp_legs.ts) against a UDP server on loopback: a query given back and taken
// again holds the new datagram and nothing of the old one, and an answer to the old use (a server
// that answers twice) never reaches the new one, which belongs to another pod, on another leg.
// The query is sent with the leg's id and kept with the pod's own (no copy of it is made).
import assert from "node:assert/strict";
import * as S from "../../agent/sys/sockets_ffi.ts";
import { DnsUdpLegs, type Pending } from "../../agent/proxy/_dns_udp_legs.ts";
import { PendingPool, type PooledPending } from "../../agent/proxy/_dns_udp_pending.ts";
import { DnsUdpMemo } from "../../agent/proxy/_dns_udp_memo.ts";
import { encodeQuery } from "../../scripts/bench/_dns_load.ts";

const sockaddr = (ip: string, port: number) => {
  const b = new Uint8Array(S.SOCKADDR_SIZE);
  return b.subarray(0, S.encodeSockaddr(b, ip, port));
};

Deno.test("PendingPool: a reused query is the new datagram's only, and gets no old answer", async () => {
  S.acquire();
  const server = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const port = (server.addr as Deno.NetAddr).port;
  const c = S.libc();
  const ep = c.epoll_create1(0);
  const pool = new PendingPool(), memo = new DnsUdpMemo();
  const answers: [Pending, number][] = [];
  const legs = new DnsUdpLegs({
    maps: { writeNat: () => {}, deleteNat: () => {} },
    gateway: "127.0.0.1",
    gateway6: "",
    receiveBuffer: 1 << 20,
    timeoutMs: 2000,
    onAnswer: (p, b) => {
      answers.push([p, (b[0]! << 8) | b[1]!]);
      pool.give(p as PooledPending); // as the Worker's finish() does
    },
    onFail: (p, e) => assert.fail(`query ${p.q?.name} failed: ${e}`),
  });
  legs.epoll = ep;
  const evs = new Uint8Array(S.EPOLL_EVENT_SIZE * 8), ev = new DataView(evs.buffer);
  const poll = (ms: number) => {
    const n = c.epoll_wait(ep, evs, 8, ms);
    for (let i = 0; i < n; i++) legs.drain(ev.getUint32(S.EPOLL_EVENT_SIZE * i + 4, true));
  };
  const o = {
    ip: "127.0.0.1",
    port,
    epId: 7,
    dir: 2,
    srcIdentity: 1000,
    dstIdentity: 2,
    cookie: 1,
  };
  const take = (id: number, name: string, clientIp: string) => {
    const p = pool.take(-1, encodeQuery(id, name), sockaddr(clientIp, 40000), performance.now());
    p.o = o;
    p.client = { ip: clientIp, port: 40000 };
    p.qv = memo.queryInto(p.msg, p.own);
    p.q = p.own;
    return p;
  };
  const buf = new Uint8Array(512);
  try {
    const p1 = take(0x1111, "a.example.com", "10.0.0.5");
    const seq1 = p1.seq;
    assert.equal(legs.forward(p1), undefined);
    const [m1, from1] = await server.receive(buf);
    const q1 = m1.slice();
    assert.deepEqual([p1.msg[0], p1.msg[1]], [0x11, 0x11], "the pod's id kept, not the leg's");
    await server.send(q1, from1);
    while (answers.length < 1) poll(100);
    assert.equal(answers[0]![0], p1);
    assert.equal(answers[0]![1], 0x1111, "answered with the pod's id");
    assert.equal(pool.out, 0);

    // Taken again (the same object) for another pod and name: nothing of the first use is left.
    const p2 = take(0x2222, "bb.example.com", "10.0.0.6");
    assert.equal(p2, p1, "the pool reuses the object");
    assert.notEqual(p2.seq, seq1);
    assert.equal(p2.q!.name, "bb.example.com.");
    assert.equal(p2.q!.id, 0x2222);
    assert.deepEqual(p2.msg, encodeQuery(0x2222, "bb.example.com"));
    assert.deepEqual(p2.addr, sockaddr("10.0.0.6", 40000));
    assert.equal(p2.answer, undefined);
    assert.equal(p2.qid, 0);
    assert.equal(legs.forward(p2), undefined);
    const [m2, from2] = await server.receive(buf);
    assert.notEqual((from2 as Deno.NetAddr).port, (from1 as Deno.NetAddr).port, "another leg");
    assert.equal(m2.length, encodeQuery(0x2222, "bb.example.com").length);

    // The server answers the first query again, on the first pod's leg: no one gets it.
    await server.send(q1, from1);
    poll(50);
    poll(50);
    assert.equal(answers.length, 1, "the old answer went to no query");
    assert.equal(legs.inflight, 1, "the new query is still in flight");
    await server.send(m2.slice(), from2);
    while (answers.length < 2) poll(100);
    assert.equal(answers[1]![0], p2);
    assert.equal(answers[1]![1], 0x2222);
    assert.equal(legs.inflight, 0);
  } finally {
    legs.close();
    c.close(ep);
    server.close();
    S.release();
  }
});
