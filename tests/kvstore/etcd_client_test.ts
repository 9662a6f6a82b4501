// EtcdClient against a local HTTP server that accepts requests but does not answer them (an
// etcd behind a black hole, not a refusing one): a request fails after its timeout naming it,
// the requests then in flight fail with it, later ones wait only SILENT_ANSWER_MS, and one answer
// ends that. No etcd needed.
import assert from "node:assert/strict";
import { EtcdClient, SILENT_ANSWER_MS } from "../../agent/kvstore/_etcd_client.ts";

Deno.test("EtcdClient fails fast while etcd leaves requests unanswered", async () => {
  let answering = false;
  const gates: PromiseWithResolvers<void>[] = [Promise.withResolvers<void>()];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async () => {
    if (!answering) await gates.at(-1)!.promise;
    return Response.json({ header: { revision: "1" } });
  });
  const client = new EtcdClient([`127.0.0.1:${server.addr.port}`], 1500);
  const failure = async (p: Promise<unknown>) => {
    const started = Date.now();
    const err = await p.then(() => undefined, (e: Error) => e);
    return { err, ms: Date.now() - started };
  };
  try {
    const first = failure(client.call("/v3/kv/range", {}));
    await new Promise((r) => setTimeout(r, 400));
    const second = failure(client.call("/v3/kv/range", {}));
    const [a, b] = await Promise.all([first, second]);
    assert.match(String(a.err?.message), /no answer within 1500 ms/);
    assert.ok(a.ms >= 1400, `the first request waited its timeout, not ${a.ms} ms`);
    assert.match(String(b.err?.message), /no answer to another request within 1500 ms/);
    assert.ok(b.ms < 1400, `the one in flight failed with it, after ${b.ms} ms`);

    const third = await failure(client.call("/v3/kv/range", {}));
    assert.match(String(third.err?.message), new RegExp(`no answer within ${SILENT_ANSWER_MS} ms`));
    assert.ok(third.ms < 1400, `a later request waits ${SILENT_ANSWER_MS} ms, not ${third.ms}`);

    answering = true;
    assert.deepEqual(await client.call("/v3/kv/range", {}), { header: { revision: "1" } });
    answering = false; // unanswered again: after an answer, the full timeout applies
    gates.push(Promise.withResolvers<void>());
    const again = await failure(client.call("/v3/kv/range", {}));
    assert.match(String(again.err?.message), /no answer within 1500 ms/);
  } finally {
    for (const g of gates) g.resolve();
    client.close();
    await server.shutdown();
  }
});
