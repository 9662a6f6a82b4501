// Audit mode with real packets: a pod selected by a default-deny policy annotated
// `cilia.io/policy-mode: audit` still receives traffic, the kernel reports each new flow the
// policy would have dropped, and the agent's flows show it as verdict AUDIT with the policy's
// name, the would-be drop reason and the same attribution a drop gets; endpoint listings and
// status say the direction is auditing. Importing the same policy in enforce mode drops the
// traffic again. Needs root.
import assert from "node:assert/strict";
import type { Flow } from "../../agent/monitor/mod.ts";
import { CiliaNode } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const policy = (mode: "audit" | "enforce") =>
  `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: backend-lockdown
  namespace: default
  annotations: {cilia.io/policy-mode: ${mode}}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`;

async function auditFlow(n: CiliaNode, port: number): Promise<Flow | undefined> {
  for (let i = 0; i < 200; i++) { // up to 10 s: the monitor may lag on a loaded machine
    const { flows } = await n.flows({ verdict: "AUDIT", port: String(port) });
    if (flows[0]) return flows[0];
    await new Promise((r) => setTimeout(r, 50));
  }
  return undefined;
}

Deno.test({
  name: "audit mode: a default-deny policy in audit mode passes traffic and reports AUDIT flows",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  await using n = await CiliaNode.create();
  const frontend = await n.addPod("frontend", { app: "frontend" });
  const backend = await n.addPod("backend", { app: "backend" });
  for (const port of [8080, 9090]) await n.peer(backend.netns).listen("tcp", port);
  await n.policy(policy("audit"));
  const probe = (port: number, ms: number) =>
    n.peer(frontend.netns).probe("tcp", backend.ipv4, port, ms);

  await t.step("traffic the policy would drop passes and is an AUDIT flow naming it", async () => {
    assert.equal(await probe(9090, 3000), true, "the audited connection passes");
    const flow = await auditFlow(n, 9090);
    assert.ok(flow, "an AUDIT flow for port 9090");
    assert.equal(flow.verdict, "AUDIT");
    assert.equal(flow.cilia_type, "policy-verdict");
    assert.equal(flow.drop_reason, 133);
    assert.equal(flow.traffic_direction, "INGRESS");
    assert.equal(flow.source.pod_name, "frontend");
    assert.equal(flow.destination.pod_name, "backend");
    assert.equal(flow.policy?.name, "backend-lockdown");
    assert.equal(flow.policy?.decision, "audit");
    assert.match(flow.policy!.text, /endpoint default\/backend is selected by .*backend-lockdown/);
    assert.match(flow.policy!.text, /audit mode/);
  });

  await t.step("traffic the policy allows is no AUDIT flow", async () => {
    assert.equal(await probe(8080, 3000), true);
    await new Promise((r) => setTimeout(r, 200));
    const { flows } = await n.flows({ verdict: "AUDIT", port: "8080" });
    assert.deepEqual(flows, []);
  });

  await t.step("endpoint listings and status say ingress is auditing", async () => {
    const eps = (await n.call("GET", "/v1/endpoint")).body as {
      name: string;
      policyMode?: { ingress: string; egress: string };
    }[];
    const be = eps.find((e) => e.name === "backend");
    assert.deepEqual(be?.policyMode, { ingress: "auditing", egress: "none" });
    const fe = eps.find((e) => e.name === "frontend");
    assert.deepEqual(fe?.policyMode, { ingress: "none", egress: "none" });
    const status = (await n.call("GET", "/v1/status")).body as {
      endpoints: { auditing: { ingress: number; egress: number } };
    };
    assert.deepEqual(status.endpoints.auditing, { ingress: 1, egress: 0 });
  });

  await t.step("the same policy in enforce mode drops", async () => {
    await n.policy(policy("enforce"));
    assert.equal(await probe(9090, 400), false);
    const eps = (await n.call("GET", "/v1/endpoint")).body as {
      name: string;
      policyMode?: { ingress: string };
    }[];
    assert.equal(eps.find((e) => e.name === "backend")?.policyMode?.ingress, "enforcing");
  });
});
