// Bad service input through the ServiceManager (what `PUT /v1/service` calls): each case is a
// clear error naming what is wrong, or a defined behaviour, and a refused upsert stores and applies
// nothing. The sink here only records what it is handed (a stand-in for KernelSink, whose
// kernel writes tests/e2e/services_test.ts covers).
import assert from "node:assert/strict";
import { z } from "zod";
import { openKvStore } from "../../agent/kvstore/kvstore.ts";
import { SILENT } from "../../agent/log.ts";
import { ServiceManager } from "../../agent/service/manager.ts";
import { MAX_BACKENDS, type ServiceSpec } from "../../agent/service/spec.ts";
import { LbState } from "../../agent/service/lb_state.ts";
import { decode, LAYOUTS, num } from "../../agent/datapath/codecs.ts";

const frontend = { ip: "10.96.0.10", port: 80, protocol: "TCP" as const };
const backends = (n: number) =>
  Array.from(
    { length: n },
    (_, i) => ({ ip: `10.${1 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`, port: 8080 }),
  );

Deno.test("ServiceManager: bad input is a clear error, or a defined behaviour", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-svc-input-" });
  const store = await openKvStore(`denokv://${dir}/kv.sqlite`);
  const applied: ServiceSpec[][] = [];
  const m = new ServiceManager({
    store,
    log: SILENT,
    podCidrs: ["10.200.0.0/24", "fd00:200::/64"],
    sink: { applyServices: (s) => Promise.resolve(void applied.push([...s])) },
  });
  try {
    await t.step("the same frontend again replaces its service (upsert)", async () => {
      const a = await m.upsert({ frontend, backends: backends(2) });
      const b = await m.upsert({ frontend, backends: backends(1) });
      assert.equal(a.created, true);
      assert.equal(b.created, false);
      assert.equal(b.service.id, a.service.id);
      assert.equal(m.list().length, 1);
    });

    const refused = async (input: unknown, msg: RegExp) => {
      const before = applied.length, list = JSON.stringify(m.list());
      // The API validates bodies with the same schema first (400 with the issue's message).
      const text = (e: unknown) =>
        e instanceof z.ZodError ? e.issues.map((i) => i.message).join("; ") : String(e);
      await assert.rejects(
        () => m.upsert(input as Parameters<typeof m.upsert>[0]),
        (e) => msg.test(text(e)) || assert.fail(`${text(e)} does not match ${msg}`),
      );
      assert.equal(applied.length, before, "nothing applied");
      assert.equal(JSON.stringify(m.list()), list, "nothing stored");
    };
    await t.step("a frontend taken by another service id is refused", async () => {
      await refused(
        { id: 99, frontend, backends: [] },
        /Frontend "10.96.0.10:80\/TCP" belongs to service 1, not 99/,
      );
    });
    await t.step("a frontend inside the pod CIDR is refused", async () => {
      await refused(
        { frontend: { ...frontend, ip: "10.200.0.7" }, backends: [] },
        /Invalid frontend "10.200.0.7": it is inside the pod CIDR "10.200.0.0\/24"/,
      );
    });
    await t.step("port 0, an unknown protocol, a bad address are refused", async () => {
      await refused(
        { frontend: { ...frontend, port: 0 }, backends: [] },
        /Invalid port: expected 1-65535/,
      );
      await refused(
        { frontend, backends: [{ ip: "10.1.0.1", port: 0 }] },
        /Invalid port: expected 1-65535/,
      );
      await refused(
        { frontend: { ...frontend, protocol: "SCTP" }, backends: [] },
        /Invalid protocol: expected "TCP" or "UDP"/,
      );
      await refused(
        { frontend: { ...frontend, ip: "10.96.0.300" }, backends: [] },
        /Invalid frontend address: expected an IPv4 or IPv6 address/,
      );
      await refused(
        { frontend, backends: [{ ip: "10.1.0.1", port: 80 }, { ip: "10.1.0.1", port: 80 }] },
        /Duplicate backend "10.1.0.1:80"/,
      );
    });
    await t.step("IPv6: one spelling, the pod CIDR checked, one family per service", async () => {
      const v6 = { ip: "fd00:96:0:0::0010", port: 80, protocol: "UDP" as const };
      const r = await m.upsert({
        frontend: v6,
        backends: [{ ip: "FD00:10::4", port: 53 }, { ip: "fd00:10::3", port: 53 }],
      });
      assert.equal(r.service.frontend.ip, "fd00:96::10", "canonical spelling");
      assert.deepEqual(r.service.backends.map((b) => b.ip), ["fd00:10::3", "fd00:10::4"]);
      const again = await m.upsert({ frontend: { ...v6, ip: "fd00:96::10" }, backends: [] });
      assert.equal(again.service.id, r.service.id, "the same frontend, spelled differently");
      await refused(
        { frontend: { ...v6, ip: "fd00:200::7" }, backends: [] },
        /Invalid frontend "fd00:200::7": it is inside the pod CIDR "fd00:200::\/64"/,
      );
      // Mixed families: the field is named (the API's 400 carries the path backends[1].ip).
      await refused(
        { frontend, backends: [{ ip: "10.1.0.1", port: 80 }, { ip: "fd00:10::3", port: 80 }] },
        /Invalid backends\[1\]\.ip "fd00:10::3": an IPv6 address for the IPv4 frontend/,
      );
      await refused(
        { frontend: v6, backends: [{ ip: "10.1.0.1", port: 53 }] },
        /Invalid backends\[0\]\.ip "10.1.0.1": an IPv4 address for the IPv6 frontend/,
      );
      // NodePort over IPv6 (SNAT mode): its nodePort is free in the IPv6 family even when an
      // IPv4 service of the protocol holds it (a dual-stack Service's two records share one).
      const np4 = await m.upsert({
        frontend: { ...frontend, ip: "10.96.0.40", protocol: "UDP" },
        type: "NodePort",
        nodePort: 30100,
        backends: [],
      });
      const np6 = await m.upsert({
        frontend: { ...v6, ip: "fd00:96::40" },
        type: "NodePort",
        nodePort: 30100,
        backends: [],
      });
      assert.deepEqual([np6.service.type, np6.service.nodePort], ["NodePort", 30100]);
      await refused(
        { frontend: { ...v6, ip: "fd00:96::41" }, type: "NodePort", nodePort: 30100, backends: [] },
        new RegExp(`Invalid nodePort 30100: service ${np6.service.id} already uses it for UDP`),
      );
      await m.delete(np4.service.id);
      await m.delete(np6.service.id);
      await refused(
        { frontend: { ...v6, ip: "fd00:96::zz" }, backends: [] },
        /Invalid frontend address: expected an IPv4 or IPv6 address/,
      );
      await m.delete(r.service.id);
    });
    await t.step("0 backends: stored with no slots (the datapath drops with 158)", async () => {
      const r = await m.upsert({ frontend: { ...frontend, ip: "10.96.0.11" }, backends: [] });
      const plan = new LbState().plan([r.service]);
      const svc = plan.writes.find((w) => w.map === "cilia_lb_services")!.updates[0]!;
      assert.equal(num(decode(LAYOUTS.lbServiceValue, svc.value).slots), 0);
    });
    await t.step(
      `${MAX_BACKENDS} backends: planned (Maglev: 65521 slots); one more is refused`,
      async () => {
        const spec = { id: 5, type: "ClusterIP" as const, frontend, algorithm: "maglev" as const };
        const plan = new LbState().plan([{
          ...spec,
          backends: backends(MAX_BACKENDS).map((b) => ({ ...b, weight: 1 })),
        }]);
        const count = (map: string) =>
          plan.writes.filter((w) => w.map === map).reduce((n, w) => n + w.updates.length, 0);
        assert.equal(count("cilia_lb_backends"), MAX_BACKENDS);
        assert.equal(count("cilia_lb_slots"), 65521);
        await refused(
          { frontend: { ...frontend, ip: "10.96.0.13" }, backends: backends(MAX_BACKENDS + 1) },
          /At most 10000 backends/,
        );
        // Deno KV holds 65,024 bytes a record (~1,500 backends): a larger service is refused with
        // its size and the limit (the API answers 413 value_too_large); etcd takes it.
        await refused(
          { frontend: { ...frontend, ip: "10.96.0.12" }, backends: backends(MAX_BACKENDS) },
          /Cannot put "cilia\/services\/\d+" in Deno KV .*: the value is \d+ bytes, the limit is 65024/,
        );
      },
    );
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
