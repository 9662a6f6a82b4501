// Identities that come and go (pod churn) leave nothing behind in the engine: the label strings
// only they used are dropped with the last of them (the engine interns label strings; before,
// every pod's unique label value stayed for good, and its WASM memory grew without end), while
// the strings policy names stay, and ids reused for new strings never make a selector match what
// it should not.

import assert from "node:assert/strict";
import { compilePolicies, PolicyEngine } from "../../policy-wasm/mod.ts";

const root = new URL("../../", import.meta.url).pathname;
const NS = "k8s:io.kubernetes.pod.namespace=default";

async function engine(): Promise<PolicyEngine> {
  const yaml = await Deno.readTextFile(`${root}examples/policies/three-tier.yaml`);
  const e = await PolicyEngine.create();
  e.setPolicy(compilePolicies({ text: yaml, file: "three-tier.yaml" }).spec);
  return e;
}

/** Identities the db endpoint admits on ingress (the backend's, by the three-tier policy). */
function admittedByDb(e: PolicyEngine): number[] {
  const ids = e.computeMapState(1).entries
    .filter((x) => x.direction === "ingress" && x.verdict === "allow" && x.identity >= 256)
    .map((x) => x.identity);
  return [...new Set(ids)].sort((a, b) => a - b);
}

Deno.test("identity churn: label strings go with the last identity that has them", async () => {
  const e = await engine();
  try {
    e.upsertIdentities([{ id: 60000, labels: ["k8s:app=db", NS] }]);
    e.setEndpoints([{ id: 1, identity: 60000, namedPorts: [] }]);
    const baseline = e.internedStrings;
    for (let round = 0; round < 5; round++) {
      const ids = Array.from({ length: 200 }, (_, i) => 300 + i);
      e.upsertIdentities(ids.map((id) => ({
        id,
        labels: [`k8s:app=${id % 2 ? "backend" : "frontend"}`, `k8s:pod=r${round}p${id}`, NS],
      })));
      assert.ok(e.internedStrings >= baseline + 200, `${e.internedStrings} vs ${baseline}`);
      assert.deepEqual(admittedByDb(e), ids.filter((id) => id % 2));
      // Replacing an identity's labels releases the old ones.
      e.upsertIdentities([{ id: 301, labels: ["k8s:app=backend", `k8s:pod=again${round}`, NS] }]);
      e.removeIdentities(ids);
      assert.equal(e.internedStrings, baseline, `round ${round}: strings left behind`);
      assert.deepEqual(admittedByDb(e), []);
    }
  } finally {
    e.close();
  }
});

Deno.test("identity churn: policy's strings stay and reused ids match nothing wrongly", async () => {
  const e = await engine();
  try {
    e.upsertIdentities([{ id: 60000, labels: ["k8s:app=db", NS] }]);
    e.setEndpoints([{ id: 1, identity: 60000, namedPorts: [] }]);
    // "backend" is policy's: an identity with it coming and going must not drop it.
    for (let i = 0; i < 3; i++) {
      e.upsertIdentities([{ id: 400, labels: ["k8s:app=backend", `k8s:pod=b${i}`, NS] }]);
      assert.deepEqual(admittedByDb(e), [400]);
      e.removeIdentities([400]);
    }
    // The freed ids now name new strings: none of these is a backend.
    e.upsertIdentities(Array.from({ length: 50 }, (_, i) => ({
      id: 500 + i,
      labels: [`k8s:app=other${i}`, `k8s:pod=n${i}`, NS],
    })));
    assert.deepEqual(admittedByDb(e), []);
    e.upsertIdentities([{ id: 401, labels: ["k8s:app=backend", NS] }]);
    assert.deepEqual(admittedByDb(e), [401]);
  } finally {
    e.close();
  }
});

Deno.test("identity churn: the engine's memory stays put over 20,000 identities", async () => {
  const e = await engine();
  try {
    const before = e.memoryBytes;
    for (let round = 0; round < 100; round++) {
      const ids = Array.from({ length: 200 }, (_, i) => 1000 + i);
      e.upsertIdentities(ids.map((id) => ({
        id,
        labels: [`k8s:app=backend`, `k8s:pod=${round}-${id}-${"x".repeat(40)}`, NS],
      })));
      e.removeIdentities(ids);
    }
    assert.ok(e.memoryBytes <= before * 2, `WASM memory ${before} -> ${e.memoryBytes} bytes`);
  } finally {
    e.close();
  }
});
