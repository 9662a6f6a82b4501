// A learned address that a toCIDR rule also names: its /32 is claimed by the CIDR identity (from
// the policy) and by the FQDN identity (from the DNS answer). The FQDN identity holds the prefix
// while the record lives (it carries the CIDR labels too), and when the record goes the prefix
// is handed back to the CIDR identity instead of being deleted (the address would fall to
// `world`). In-process agent with a recording sink; no root.
import assert from "node:assert/strict";
import { startAgent } from "./_fixture.ts";
import { FQDN_IDENTITY_BASE } from "../../agent/identity/fqdn.ts";

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn-cidr, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchName: api.example.com}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toCIDR: [192.0.2.10/32]
    toPorts: [{ports: [{port: "53", protocol: ANY}]}]
`;

Deno.test("a learned /32 that a CIDR rule names is handed back to the CIDR identity", async () => {
  const t = await startAgent();
  try {
    const r = await t.call("PUT", "/v1/policy", POLICY);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const prefix = "192.0.2.10/32";
    const cidrId = t.sink.ipcache.get(prefix);
    assert.ok(cidrId !== undefined && cidrId < FQDN_IDENTITY_BASE, `CIDR identity ${cidrId}`);

    const err = await t.agent.fqdn.learn(7, ["api.example.com."], [{ ip: "192.0.2.10", ttl: 60 }]);
    assert.equal(err, undefined);
    const fqdnId = t.sink.ipcache.get(prefix)!;
    assert.ok(fqdnId > FQDN_IDENTITY_BASE, `FQDN identity holds the prefix, got ${fqdnId}`);

    // A policy load while the record lives keeps the FQDN identity on the prefix.
    const again = await t.call("PUT", "/v1/policy", POLICY.replace("8080", "8081"));
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.equal(t.sink.ipcache.get(prefix), fqdnId);

    assert.equal(await t.agent.fqdn.clean({ name: "api.example.com" }), 1);
    assert.equal(t.sink.ipcache.get(prefix), cidrId, "handed back, not deleted");
  } finally {
    await t.close();
  }
});

Deno.test("a CIDR identity reused for another prefix lets go of its old prefix", async () => {
  const t = await startAgent();
  try {
    const cidr = (p: string) =>
      POLICY.slice(0, POLICY.indexOf("  - toFQDNs")) + `  - toCIDR: [${p}]\n`;
    let r = await t.call("PUT", "/v1/policy", cidr("198.51.100.7/32"));
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const id = t.sink.ipcache.get("198.51.100.7/32");
    assert.ok(id !== undefined);
    r = await t.call("PUT", "/v1/policy", cidr("198.51.100.8/32"));
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(t.sink.ipcache.get("198.51.100.8/32"), id, "the number is reused");
    assert.equal(t.sink.ipcache.get("198.51.100.7/32"), undefined, "the old prefix is gone");
  } finally {
    await t.close();
  }
});
