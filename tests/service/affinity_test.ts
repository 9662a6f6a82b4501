// The pure half of session affinity and terminating backends (lb.h 6. and 7.): the record's
// rules, the map plan (affinity flag, cilia_lb_affinity_match per active backend, terminating
// backends kept but without slots), the Kubernetes import, and the CLI's duration parser. The
// kernel half is tests/e2e/services_lb_test.ts.
import assert from "node:assert/strict";
import { LB_SVC_F_AFFINITY, LbState } from "../../agent/service/lb_state.ts";
import { decode, LAYOUTS, num } from "../../agent/datapath/codecs.ts";
import {
  DEFAULT_AFFINITY_TIMEOUT,
  normaliseService,
  ServiceInputSchema,
  type ServiceSpec,
} from "../../agent/service/spec.ts";
import { importKubernetesServices } from "../../agent/service/k8s_import.ts";
import { parseDuration } from "../../cli/service.ts";

const spec = (o: Record<string, unknown>): ServiceSpec =>
  normaliseService({ ...ServiceInputSchema.parse(o), id: 1 });

const base = {
  frontend: { ip: "10.96.0.1", port: 80 },
  backends: [{ ip: "10.0.0.1", port: 80 }, { ip: "10.0.0.2", port: 80 }],
};

Deno.test("service records: sessionAffinity has one spelling and checked timeouts", () => {
  assert.equal(
    spec({ ...base, sessionAffinity: "ClientIP" }).affinityTimeoutSeconds,
    DEFAULT_AFFINITY_TIMEOUT,
  );
  const none = spec({ ...base, sessionAffinity: "None" });
  assert.ok(!("sessionAffinity" in none), "None is no field");
  assert.deepEqual(
    spec({ ...base, backends: [{ ip: "10.0.0.1", port: 80, terminating: false }] })
      .backends,
    [{ ip: "10.0.0.1", port: 80, weight: 1 }],
  );
  for (
    const [bad, msg] of [
      [{ sessionAffinity: "ClientIP", affinityTimeoutSeconds: 0 }, /expected 1-86400/],
      [{ sessionAffinity: "ClientIP", affinityTimeoutSeconds: 86401 }, /expected 1-86400/],
      [{ affinityTimeoutSeconds: 60 }, /only with sessionAffinity "ClientIP"/],
      [{ sessionAffinity: "Cookie" }, /expected "None" or "ClientIP"/],
    ] as const
  ) {
    const r = ServiceInputSchema.safeParse({ ...base, ...bad });
    assert.ok(!r.success, JSON.stringify(bad));
    assert.match(r.error.issues[0]!.message, msg);
  }
});

Deno.test("LbState: affinity flag and match entries; terminating backends keep only their entry", () => {
  const s = new LbState();
  const p = s.plan([
    spec({
      ...base,
      sessionAffinity: "ClientIP",
      affinityTimeoutSeconds: 60,
      backends: [...base.backends, { ip: "10.0.0.3", port: 80, terminating: true }],
    }),
  ]);
  const of = (m: string) => p.writes.filter((w) => w.map === m).flatMap((w) => w.updates);
  assert.equal(of("cilia_lb_backends").length, 3, "the terminating backend keeps its entry");
  const slotIds = new Set(
    of("cilia_lb_slots").map((u) => num(decode(LAYOUTS.lbSlotValue, u.value).backend_id)),
  );
  p.commit();
  const b3Id = s.backendId("10.0.0.3", 80, "TCP");
  assert.ok(b3Id !== undefined);
  assert.equal(slotIds.size, 2);
  assert.ok(!slotIds.has(b3Id), "no slot for the terminating backend");
  const match = of("cilia_lb_affinity_match").map((u) => ({
    k: decode(LAYOUTS.lbAffinityMatchKey, u.key),
    v: decode(LAYOUTS.lbAffinityMatch, u.value),
  }));
  assert.equal(match.length, 2, "one match entry per active backend");
  assert.ok(match.every((m) => num(m.v.timeout_s) === 60 && num(m.k.svc_id) === 1));
  assert.ok(match.every((m) => num(m.k.backend_id) !== b3Id));
  const sv = decode(LAYOUTS.lbServiceValue, of("cilia_lb_services")[0]!.value);
  assert.equal(num(sv.flags), LB_SVC_F_AFFINITY);
  assert.equal(num(sv.slots), 2);
  // Affinity off: the match entries go after the service stops asking for them.
  const p2 = s.plan([spec(base)]);
  const order = p2.writes.map((w) => [w.map, w.updates.length, w.deletes.length]);
  const svcAt = order.findIndex(([m]) => m === "cilia_lb_services");
  const delAt = order.findIndex(([m, , d]) => m === "cilia_lb_affinity_match" && d === 2);
  assert.ok(svcAt >= 0 && delAt > svcAt, JSON.stringify(order));
});

Deno.test("importKubernetesServices() keeps ClientIP affinity and terminating endpoints", () => {
  const [r] = importKubernetesServices(`
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [10.0.0.1], conditions: {ready: true}}
  - {addresses: [10.0.0.2], conditions: {ready: false, serving: true, terminating: true}}
  - {addresses: [10.0.0.3], conditions: {ready: false, serving: false, terminating: true}}
  - {addresses: [10.0.0.4], conditions: {ready: false}}
`);
  assert.equal(r!.sessionAffinity, "ClientIP");
  assert.equal(r!.affinityTimeoutSeconds, 600);
  assert.deepEqual(r!.backends, [
    { ip: "10.0.0.1", port: 8080, weight: 1 },
    { ip: "10.0.0.2", port: 8080, weight: 1, terminating: true },
  ]);
  assert.throws(
    () =>
      importKubernetesServices(`apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.20, sessionAffinity: Sticky, ports: [{port: 80}]}`),
    /spec\.sessionAffinity: Unsupported sessionAffinity/,
  );
});

Deno.test("parseDuration() reads --affinity-timeout values and refuses others", () => {
  assert.equal(parseDuration("3h"), 10800);
  assert.equal(parseDuration("1h30m"), 5400);
  assert.equal(parseDuration("90s"), 90);
  assert.equal(parseDuration("45"), 45);
  for (const bad of ["", "0s", "25h", "3d", "-1", "1.5h"]) {
    assert.throws(() => parseDuration(bad), /Invalid --affinity-timeout/, bad);
  }
});
