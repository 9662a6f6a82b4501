// The DNS UDP Worker's reuse of what it parsed (_dns_udp_memo.ts) gives what the parser gives,
// for the query and answer it belongs to only, and its packed flow records
// (_dns_udp_records.ts) come back on the main thread as the records they stand for.
import assert from "node:assert/strict";
import { parseAnswer, parseQuery } from "../../agent/proxy/dns_message.ts";
import { DnsUdpMemo } from "../../agent/proxy/_dns_udp_memo.ts";
import { RecordBatcher, recordsOf } from "../../agent/proxy/_dns_udp_records.ts";
import type { OrigDestination } from "../../agent/datapath/proxy_maps.ts";
import { encodeQuery } from "../../scripts/bench/_dns_load.ts";
import { answerWire } from "./_dns_reference.ts";

const A = 1;
const answer = (id: number, qname: string, ip: string, ttl = 60) =>
  answerWire({ id, qname, answers: [{ name: qname, type: A, data: ip, ttl }] });

Deno.test("DnsUdpMemo gives the parser's query and answer, reused only for equal bytes", async (t) => {
  const memo = new DnsUdpMemo();
  await t.step("a repeated query differs only in its id and bytes", () => {
    const m1 = encodeQuery(0x1111, "api.example.com"), m2 = encodeQuery(0x2222, "api.example.com");
    const a = memo.queryOf(m1), b = memo.queryOf(m2);
    assert.deepStrictEqual(b.q, parseQuery(m2));
    assert.strictEqual(b.q.raw, m2);
    assert.deepStrictEqual(a.version, b.version);
    const c = memo.queryOf(encodeQuery(0x2222, "www.example.com"));
    assert.deepStrictEqual(c.q.name, "www.example.com.");
    assert(c.version !== b.version);
  });
  await t.step("an answer is reused for the same question and bytes, else parsed", () => {
    const m1 = encodeQuery(7, "api.example.com"), m2 = encodeQuery(8, "api.example.com");
    const { q: q1, version: v1 } = memo.queryOf(m1);
    const { q: q2, version: v2 } = memo.queryOf(m2);
    const a1 = memo.answerOf(q1, v1, answer(7, "api.example.com", "203.0.113.10"));
    const a2 = memo.answerOf(q2, v2, answer(8, "api.example.com", "203.0.113.10"));
    assert.strictEqual(a2, a1);
    assert.deepStrictEqual(a2, parseAnswer(q2, answer(8, "api.example.com", "203.0.113.10")));
    // Another address or TTL: parsed again.
    const a3 = memo.answerOf(q2, v2, answer(8, "api.example.com", "203.0.113.10", 30));
    assert.deepStrictEqual(a3?.ips, [{ ip: "203.0.113.10", ttl: 30 }]);
    // The same answer bytes for another question (a later query version) do not match it.
    const { q: q4, version: v4 } = memo.queryOf(encodeQuery(8, "www.example.com"));
    assert.deepStrictEqual(
      memo.answerOf(q4, v4, answer(8, "api.example.com", "203.0.113.10", 30)),
      undefined,
    );
    // An answer with another id than the query's is not this query's answer.
    assert.deepStrictEqual(
      memo.answerOf(q2, v2, answer(9, "api.example.com", "203.0.113.10", 30)),
      undefined,
    );
  });
  await t.step("addresses and keys", () => {
    const sa = new Uint8Array([2, 0, 0x9c, 0x40, 10, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0]);
    const x = memo.addrOf(sa);
    assert.deepStrictEqual(x, { ip: "10.0.0.5", port: 40000 });
    assert.strictEqual(memo.addrOf(sa.slice()), x);
    sa[3] = 0x41;
    assert.deepStrictEqual(memo.addrOf(sa), { ip: "10.0.0.5", port: 40001 });
    const o = orig();
    assert.deepStrictEqual(memo.verdictKey(o, "a.example.com."), "3/16777217/53/a.example.com.");
    assert.deepStrictEqual(
      memo.verdictKey({ ...o, epId: 4 }, "a.example.com."),
      "4/16777217/53/a.example.com.",
    );
  });
});

function orig(): OrigDestination {
  return {
    ip: "203.0.113.10",
    port: 53,
    epId: 3,
    dir: 2,
    srcIdentity: 1000,
    dstIdentity: 16777217,
    cookie: 9,
  };
}

Deno.test("RecordBatcher packs records that recordsOf() makes again", () => {
  const memo = new DnsUdpMemo(), b = new RecordBatcher(1);
  const o = orig();
  const { q, version } = memo.queryOf(encodeQuery(1, "api.example.com"));
  const a = memo.answerOf(q, version, answer(1, "api.example.com", "203.0.113.10"));
  const parts = (port: number, rcode = 0) => ({
    o,
    client: { ip: "10.0.0.5", port },
    cookie: 9,
    query: q.name,
    qtype: q.type,
    allowed: true,
    rcode,
    answer: rcode === 0 ? a : undefined,
    error: rcode === 0 ? undefined : "no answer",
  });
  b.add(parts(40000), 0.25, 1000);
  b.add(parts(40001), 0.5, 1001);
  b.add(parts(40002, 2), 3, 1002);
  assert.deepStrictEqual(b.length, 3);
  const wire = b.take();
  assert.deepStrictEqual(wire.templates.length, 2); // the first two share one
  assert.deepStrictEqual(b.length, 0);
  const base = {
    epId: 3,
    server: { ip: "203.0.113.10", port: 53 },
    srcIdentity: 1000,
    dstIdentity: 16777217,
    cookie: 9,
    query: "api.example.com.",
    qtype: "A",
    allowed: true,
  };
  const got = recordsOf(structuredClone(wire));
  assert.deepStrictEqual(got, [
    {
      ...base,
      client: { ip: "10.0.0.5", port: 40000 },
      rcode: 0,
      cnames: [],
      ips: ["203.0.113.10"],
      latencyMs: 0.25,
      at: 1000,
    },
    {
      ...base,
      client: { ip: "10.0.0.5", port: 40001 },
      rcode: 0,
      cnames: [],
      ips: ["203.0.113.10"],
      latencyMs: 0.5,
      at: 1001,
    },
    {
      ...base,
      client: { ip: "10.0.0.5", port: 40002 },
      rcode: 2,
      cnames: [],
      ips: [],
      latencyMs: 3,
      error: "no answer",
      at: 1002,
    },
  ]);
  assert.notStrictEqual(got[0]!.ips, got[1]!.ips); // records share nothing
});
