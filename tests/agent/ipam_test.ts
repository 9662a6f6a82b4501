// Host-scope IPAM on a real Deno KV file: allocation skips network, gateway and broadcast,
// release, exhaustion names the CIDR, IPv6, and no address is handed out twice across a
// restart (a new Ipam on the same store) or between racing allocations.

import assert from "node:assert/strict";
import { openKvStore } from "../../agent/kvstore/kvstore.ts";
import {
  Ipam,
  IpamExhaustedError,
  IpamNotFoundError,
  IpamRangeError,
} from "../../agent/ipam/ipam.ts";
import { SILENT } from "../../agent/log.ts";

async function withStore(fn: (url: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cilia-ipam-" });
  try {
    await fn(`denokv://${dir}/kv.sqlite`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("IPAM: allocates after the gateway, never the broadcast, releases, and names the CIDR when full", async () => {
  await withStore(async (url) => {
    const store = await openKvStore(url);
    try {
      const ipam = new Ipam({ store, node: "n1", podCidr: "10.7.0.0/29", log: SILENT });
      assert.deepEqual(ipam.pools()[0], {
        family: 4,
        cidr: "10.7.0.0/29",
        gateway: "10.7.0.1",
        allocated: 0,
        capacity: "5",
      });
      const got: string[] = [];
      for (let i = 0; i < 5; i++) got.push((await ipam.allocate({ owner: `c${i}` })).ip);
      assert.deepEqual(got, ["10.7.0.2", "10.7.0.3", "10.7.0.4", "10.7.0.5", "10.7.0.6"]);
      await assert.rejects(
        () => ipam.allocate({ owner: "late" }),
        (e: Error) =>
          e instanceof IpamExhaustedError &&
          e.message ===
            'Cannot allocate an IPv4 address from pod CIDR "10.7.0.0/29": all 5 addresses are in use',
      );
      assert.equal((await ipam.release("10.7.0.3")).owner, "c1");
      await assert.rejects(() => ipam.release("10.7.0.3"), IpamNotFoundError);
      assert.equal((await ipam.allocate({ owner: "again" })).ip, "10.7.0.3");
      await assert.rejects(
        () => ipam.allocate({ owner: "x", family: 6 }),
        /no IPv6 pod CIDR is configured/,
      );
      await assert.rejects(() => ipam.claim("10.8.0.1", "x"), IpamRangeError);
    } finally {
      await store.close();
    }
  });
});

Deno.test("IPAM: no address is handed out twice across a restart or between racing allocations", async () => {
  await withStore(async (url) => {
    const first = await openKvStore(url);
    const before = new Ipam({
      store: first,
      node: "n1",
      podCidr: "10.7.0.0/28",
      podCidrV6: "fd00:7::/120",
      log: SILENT,
    });
    const a = await Promise.all(
      Array.from({ length: 6 }, (_, i) => before.allocate({ owner: `a${i}` })),
    );
    const v6 = await before.allocate({ owner: "six", family: 6 });
    assert.equal(v6.ip, "fd00:7::2");
    await before.release(a[0]!.ip);
    await first.close();

    const store = await openKvStore(url);
    try {
      const after = new Ipam({
        store,
        node: "n1",
        podCidr: "10.7.0.0/28",
        podCidrV6: "fd00:7::/120",
        log: SILENT,
      });
      assert.equal(await after.restore(), 6);
      assert.deepEqual(after.list().map((x) => x.owner), ["a1", "a2", "a3", "a4", "a5", "six"]);
      // A second allocator on the same node's keys (another process): the key decides.
      const rival = new Ipam({ store, node: "n1", podCidr: "10.7.0.0/28", log: SILENT });
      const more = await Promise.all([
        ...Array.from({ length: 4 }, (_, i) => after.allocate({ owner: `b${i}` })),
        ...Array.from({ length: 4 }, (_, i) => rival.allocate({ owner: `r${i}` })),
      ]);
      const all = [...a.slice(1), ...more].map((x) => x.ip);
      assert.equal(new Set(all).size, all.length, `no duplicates in ${all}`);
      assert.ok(!all.includes("10.7.0.1") && !all.includes("10.7.0.15"));
      assert.equal((await store.list("cilia/ipam/n1/")).length, 5 + 8 + 1);
    } finally {
      await store.close();
    }
  });
});

Deno.test("IPAM: allocateAll() takes both families in one write, probes again when a rival holds one, and leaves nothing on failure", async () => {
  await withStore(async (url) => {
    const store = await openKvStore(url);
    try {
      const cidrs = { podCidr: "10.7.0.0/28", podCidrV6: "fd00:7::/125" };
      const ipam = new Ipam({ store, node: "n1", ...cidrs, log: SILENT });
      const before = Number(await store.cursor());
      const first = await ipam.allocateAll("pod-a");
      assert.deepEqual(first.map((a) => [a.ip, a.owner]), [["10.7.0.2", "pod-a"], [
        "fd00:7::2",
        "pod-a",
      ]]);
      assert.equal(Number(await store.cursor()) - before, 2, "two keys, one change each");
      // Another process took the next IPv6 address: the write fails, and the family-by-family
      // path skips that address.
      const rival = new Ipam({ store, node: "n1", ...cidrs, log: SILENT });
      await rival.claim("fd00:7::3", "rival");
      const second = await ipam.allocateAll("pod-b");
      assert.deepEqual(second.map((a) => a.ip), ["10.7.0.3", "fd00:7::4"]);
      assert.equal(ipam.get("fd00:7::3")?.owner, "rival");
      // Room for more IPv4 but no IPv6 (/125: ::2 to ::7): the IPv4 address is given back.
      await ipam.allocateAll("pod-c"); // ::5
      await ipam.allocateAll("pod-d"); // ::6
      await ipam.allocateAll("pod-e"); // ::7
      const v4 = ipam.list().filter((a) => a.family === 4).length;
      await assert.rejects(ipam.allocateAll("pod-f"), IpamExhaustedError);
      assert.equal(ipam.list().filter((a) => a.family === 4).length, v4);
      assert.ok(!ipam.list().some((a) => a.owner === "pod-f"));
      assert.ok(
        !(await store.list("cilia/ipam/n1/")).some((e) =>
          /pod-f/.test(new TextDecoder().decode(e.value))
        ),
      );
    } finally {
      await store.close();
    }
  });
});
