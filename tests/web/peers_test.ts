// The matrix's peers (web/app/peers.ts): endpoints, the named CIDRs each probed at an address the
// engine resolves to that CIDR (outside narrower prefixes and endpoint IPs), addresses queries name
// outside them, world and host. The probed address is checked against the engine's own IP lookup.

import { assertEquals } from "./_assert.ts";
import { matrixPeers } from "../../web/app/peers.ts";
import {
  cidrPrefixesOf,
  PolicyEngine,
  prepareScenario,
  resolvePeer,
} from "../../policy-wasm/mod.ts";

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: default}
spec:
  endpointSelector: {}
  egress:
    - toCIDRSet:
        - cidr: 10.0.0.0/8
          except: [10.0.0.0/24]
        - cidr: 2001:db8::/32
    - toCIDR: [192.0.2.7/32, 0.0.0.0/0]
`;

Deno.test("matrixPeers(): each named CIDR probed at an address of its own", async () => {
  const engine = await PolicyEngine.create();
  try {
    const { cluster } = prepareScenario(engine, {
      sources: [{ text: POLICY }],
      scenario: {
        policies: [POLICY],
        // 10.0.1.0 (right after the except) is an endpoint's: the probe goes elsewhere.
        endpoints: [{ name: "a", labels: { app: "a" }, ip: "10.0.1.0" }],
        queries: [
          { from: "a", to: { cidr: "198.51.100.9" }, port: 80, protocol: "TCP" },
          { from: "a", to: { cidr: "10.9.9.9" }, port: 80, protocol: "TCP" },
        ],
      },
    });
    const peers = matrixPeers(cluster.endpoints, {
      cidrs: cidrPrefixesOf(engine.spec),
      queries: [
        { from: "a", to: { cidr: "198.51.100.9" }, port: 80, protocol: "TCP" },
        { from: "a", to: { cidr: "10.9.9.9" }, port: 80, protocol: "TCP" },
      ],
    });
    assertEquals(peers.map((p) => [p.kind, p.name, p.ref]), [
      ["endpoint", "a", "a"],
      ["cidr", "10.0.0.0/24", { cidr: "10.0.0.1" }],
      ["cidr", "10.0.0.0/8", { cidr: "10.255.255.255" }],
      ["cidr", "192.0.2.7/32", { cidr: "192.0.2.7" }],
      ["cidr", "2001:db8::/32", { cidr: "2001:db8::1" }],
      // 10.9.9.9 is inside 10.0.0.0/8: that row stands for it; 0.0.0.0/0 is world.
      ["cidr", "198.51.100.9", { cidr: "198.51.100.9" }],
      ["world", "world", { entity: "world" }],
      ["host", "host", { entity: "host" }],
    ]);
    // The engine resolves every probe to the identity of its own prefix.
    const identityOf = (prefix: string) => engine.identities.find((i) => i.cidr === prefix)?.id;
    for (const p of peers.filter((p) => p.kind === "cidr" && p.name.includes("/"))) {
      const peer = resolvePeer(cluster, engine, p.ref as { cidr: string });
      assertEquals(peer.identity, identityOf(p.name), p.name);
    }
  } finally {
    engine.close();
  }
});
