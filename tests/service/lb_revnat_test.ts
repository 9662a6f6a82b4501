// Reverse NAT of service replies from the client's own conntrack entry (bpf/lib/lb.h,
// conntrack.h 6.), with real packets: a connection through a ClusterIP keeps one DIR_SERVICE
// entry (forward) and its egress entry carries the service id; a connection whose egress entry
// predates that (an older datapath: no CT_F_REV_NAT_OWN, a reverse DIR_SERVICE entry instead)
// still gets its replies translated — and without that reverse entry it would not, so the
// fallback is what carries it. The server writes only when the test says so (after any change to
// the entry), so the reply that is judged follows no packet of the client's that would refresh
// the entry.
import assert from "node:assert/strict";
import { dumpConntrack } from "../../agent/datapath/conntrack_gc.ts";
import { DIR_EGRESS, DIR_SERVICE, encode, LAYOUTS, num } from "../../agent/datapath/codecs.ts";
import { closeFd, mapUpdate, objGet, withLibs } from "../../agent/datapath/ffi.ts";
import type { ServiceSpec } from "../../agent/service/spec.ts";
import { LbLab } from "../../scripts/bench/_lb_lab.ts";
import { benchServices } from "../../scripts/bench/_lb_services.ts";
import { denoIn, waitListening } from "../e2e/_services_lab.ts";
import { needsRoot } from "../helpers/root.ts";

const PORT = 7000, SVC_ID = 100, CT_F_REV_NAT_OWN = 1 << 5, CLIENT_EP = 1;

// Each line on stdin: "hi" to the oldest connection not answered yet (or to the next one accepted),
// which then closes.
const SERVER = `
const l = Deno.listen({ hostname: "0.0.0.0", port: ${PORT} });
const held = [];
let owed = 0;
const answer = async (c) => {
  await c.write(new TextEncoder().encode("hi\\n")).catch(() => {});
  try { c.close(); } catch { /* gone */ }
};
(async () => { for await (const c of l) owed > 0 ? (owed--, answer(c)) : held.push(c); })();
for await (const chunk of Deno.stdin.readable) {
  for (const b of chunk) if (b === 10) held.length > 0 ? answer(held.shift()) : owed++;
}`;

const CLIENT = `
const c = await Deno.connect({ hostname: Deno.args[0], port: ${PORT} });
const buf = new Uint8Array(16);
const got = await Promise.race([
  c.read(buf).then((n) => n === null ? "closed" : new TextDecoder().decode(buf.subarray(0, n)).trim()),
  new Promise((r) => setTimeout(() => r("timeout"), Number(Deno.args[1]))),
]);
console.log(got);
Deno.exit(0);`;

Deno.test({
  name: "service replies: reverse NAT from the egress entry, and from an older datapath's entries",
  ...needsRoot(["ip", "tc", "bpftool", "clang", "haproxy", "curl"]),
  async fn(t) {
    await using lab = await LbLab.create([{ name: "cilia", kind: "cilia", services: 2 }]);
    const s = lab.setups[0]!;
    const extra: ServiceSpec = {
      id: SVC_ID,
      type: "ClusterIP",
      frontend: { ip: s.target, port: PORT, protocol: "TCP" },
      algorithm: "random",
      backends: [{ ip: s.server.ipv4, port: PORT, weight: 1 }],
    };
    await s.sink!.applyServices([...benchServices(2, s.server.ipv4).specs, extra]);
    const dir = lab.lab.dir;
    await Deno.writeTextFile(`${dir}/revnat_server.ts`, SERVER);
    await Deno.writeTextFile(`${dir}/revnat_client.ts`, CLIENT);
    const server = denoIn(s.server.netns, `${dir}/revnat_server.ts`, [], {
      stdin: "piped",
      stdout: "null",
    }).spawn();
    const say = server.stdin.getWriter();
    const ctMap = s.sink!.datapath.pins.maps.cilia_ct;
    const egress = () =>
      dumpConntrack(ctMap).filter((e) =>
        num(e.key.dir) === DIR_EGRESS && num(e.key.ep_id) === CLIENT_EP &&
        num(e.key["tuple.dport"]) === PORT
      );
    /**
     * One connection; `tamper` runs on its egress entry before the server writes. The client waits
     * ms for the reply: long where one must come (a loaded machine is slow), short where none may.
     */
    const connect = async (tamper?: (e: ReturnType<typeof egress>[0]) => void, ms = 10_000) => {
      const before = new Set(egress().map((e) => num(e.key["tuple.sport"])));
      const client = denoIn(s.client.netns, `${dir}/revnat_client.ts`, [s.target, String(ms)])
        .spawn();
      const out = client.output();
      let entry: ReturnType<typeof egress>[0] | undefined;
      for (const deadline = Date.now() + 10_000; !entry && Date.now() < deadline;) {
        entry = egress().find((e) => !before.has(num(e.key["tuple.sport"])));
        if (!entry) await new Promise((r) => setTimeout(r, 10));
      }
      assert.ok(entry, "the connection's egress entry");
      tamper?.(entry);
      await say.write(new TextEncoder().encode("go\n"));
      return { entry, got: new TextDecoder().decode((await out).stdout).trim() };
    };
    const write = (key: Uint8Array, value: Uint8Array) =>
      withLibs(() => {
        const fd = objGet(ctMap);
        try {
          assert.equal(mapUpdate(fd, key, value), 0, "conntrack write");
        } finally {
          closeFd(fd);
        }
      });
    /** The entry as an older datapath left it: no own reverse-NAT id; maybe a reverse entry. */
    const asOlder = (reverseEntry: boolean) => (e: ReturnType<typeof egress>[0]) => {
      const value = { ...e.value, flags: num(e.value.flags) & ~CT_F_REV_NAT_OWN, rev_nat: 0 };
      write(encode(LAYOUTS.ctKey, e.key), encode(LAYOUTS.ctEntry, value));
      if (reverseEntry) {
        write(
          encode(LAYOUTS.ctKey, { ...e.key, dir: DIR_SERVICE }),
          encode(LAYOUTS.ctEntry, { ...e.value, flags: 0, rev_nat: SVC_ID }),
        );
      }
    };
    try {
      await waitListening(lab.lab, s.server.netns, `sport = :${PORT}`);
      await t.step("the egress entry carries the service id; no reverse entry", async () => {
        const { entry, got } = await connect();
        assert.equal(got, "hi");
        assert.equal(num(entry.value.rev_nat), SVC_ID);
        assert.ok(num(entry.value.flags) & CT_F_REV_NAT_OWN);
        const reverse = dumpConntrack(ctMap).filter((e) =>
          num(e.key.dir) === DIR_SERVICE && num(e.key["tuple.dport"]) === PORT
        );
        assert.deepEqual(reverse.map((e) => num(e.value.rev_nat)), [SVC_ID], "forward only");
      });
      await t.step(
        "an older datapath's entries: the reverse entry translates the reply",
        async () => {
          assert.equal((await connect(asOlder(true))).got, "hi");
        },
      );
      await t.step("without that reverse entry the reply is not translated", async () => {
        assert.notEqual((await connect(asOlder(false), 4000)).got, "hi");
      });
    } finally {
      await say.close().catch(() => {});
      server.kill("SIGKILL");
      await server.status;
    }
  },
});
