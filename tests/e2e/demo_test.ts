// `deno task demo --once`, as README command 1 runs it: the report shows every flow with the
// verdict the policy gives it (drops with reason and identities), it exits 0, and it leaves no
// namespace, mount, file or process behind; its services scene balances 16 connections over two
// backends and `observe` shows the service next to each. The demo's policy file and the scenario
// that `cilia policy test` runs hold the same documents. The demo itself needs root.
import assert from "node:assert/strict";
import { parse as parseYaml, parseAllDocuments } from "yaml";
import { needsRoot } from "../helpers/root.ts";

const root = new URL("../../", import.meta.url).pathname;

Deno.test("the demo's scenario tests exactly the policy the demo imports", async () => {
  const file = await Deno.readTextFile(`${root}examples/policies/three-tier.yaml`);
  const scenario = parseYaml(
    await Deno.readTextFile(`${root}examples/policies/three-tier.scenario.yaml`),
  ) as { policies: string[] };
  assert.deepEqual(
    scenario.policies.map((p) => parseYaml(p)),
    parseAllDocuments(file).map((d) => d.toJSON()),
  );
});

Deno.test({
  name: "deno task demo --once: the report, exit 0, nothing left behind",
  ...needsRoot(["dnsmasq", "dig"]),
}, async () => {
  const o = await new Deno.Command(`${root}bin/deno`, {
    args: ["task", "demo", "--once"],
    cwd: root,
    env: { NO_COLOR: "1" },
    stdin: "null",
  }).output();
  const out = new TextDecoder().decode(o.stdout), err = new TextDecoder().decode(o.stderr);
  assert.equal(o.code, 0, `${out}\n${err}`);
  for (
    const line of [
      /^ {2}preflight {2}root, bpffs/m,
      /^ {2}pods \(CNI\) frontend {2}10\.200\.0\.\d+ +app=frontend +identity \d+/m,
      /^ {2}policy {5}bin\/cilia policy import examples\/policies\/three-tier\.yaml: Imported 3 policies/m,
      /frontend → backend +TCP 8080 +allowed +frontend egress: L3 rule; backend ingress: L4 rule/,
      /frontend → backend +TCP 9090 +dropped +Policy denied \(133\) at backend ingress: \d+ \(app=frontend\) → \d+ \(app=backend\)/,
      /frontend → db +TCP 5432 +dropped +Policy denied \(133\) at frontend egress/,
      /external → db +TCP 5432 +dropped +Policy denied by denylist \(181\) at db ingress: \d+ \(cidr:203\.0\.113\.0\/24\) → \d+ \(app=db\)/,
      /node → db +ping +allowed/,
      /10 flows: 4 allowed, 6 dropped — every verdict as the policy says/,
      /cilia_drop_count_total\{direction="INGRESS",reason="Policy denied by denylist"\} [1-9]/,
      /\$ cilia observe --type drop --from-pod default\/frontend/,
      /default\/frontend:\d+ \(app=frontend, ID:\d+\) -> default\/backend:9090 \(app=backend, ID:\d+\) drop INGRESS DROPPED POLICY_DENIED \(133\) .* endpoint default\/backend is selected by CiliumNetworkPolicy default\/\S+ \(spec\) for ingress and no rule allows it/,
      /policy {5}bin\/cilia policy import examples\/policies\/http-get-public\.yaml: Imported 1 policy/,
      /frontend → backend +HTTP GET \/public\/index\.html +200 hello 10\.200\.0\.\d+, this is \/public\/index\.html/,
      /frontend → backend +HTTP GET \/private\/keys +403 Access denied/,
      /frontend → backend +HTTP POST \/public\/form +403 Access denied/,
      /policy {5}bin\/cilia policy import examples\/policies\/dns-fqdn\.yaml: Imported 1 policy/,
      /dns-client → 203\.0\.113\.10 +TCP 80 \(no lookup yet\) +dropped/,
      /dns-client → DNS +A api\.example\.com +NOERROR 203\.0\.113\.10/,
      /dns-client → DNS +A www\.other\.net +REFUSED/,
      /dns-client → api\.example\.com TCP 80 \(by name\) +allowed \(203\.0\.113\.10\)/,
      /policy {5}bin\/cilia policy import examples\/policies\/web-service\.yaml: Imported 1 policy/,
      /service {4}bin\/cilia service create --frontend 10\.96\.0\.10:80\/TCP --name default\/web --backends 10\.200\.0\.\d+:8080,10\.200\.0\.\d+:8080/,
      /frontend → 10\.96\.0\.10:80 +HTTP, 16 connections +web-1 ×([1-9]|1[0-5]), web-2 ×([1-9]|1[0-5]) /,
      /default\/frontend:\d+ \(app=frontend, ID:\d+\) -> default\/web-[12]:8080 \(app=web, ID:\d+\) via service default\/web 10\.96\.0\.10:80\/TCP trace EGRESS FORWARDED .* allowed by CiliumNetworkPolicy default\/frontend-to-web/,
      /removed everything the demo made/,
    ]
  ) assert.match(out, line);
  assert.doesNotMatch(out, /UNEXPECTED/);

  const netns = new TextDecoder().decode(
    (await new Deno.Command("ip", { args: ["netns", "list"] }).output()).stdout,
  );
  assert.doesNotMatch(netns, /ciliademo-/);
  await assert.rejects(() => Deno.lstat("/run/ciliademo"), Deno.errors.NotFound);
  assert.doesNotMatch(await Deno.readTextFile("/proc/self/mountinfo"), /ciliademo/);
  const procs = new TextDecoder().decode(
    (await new Deno.Command("ps", { args: ["-eo", "args"] }).output()).stdout,
  );
  assert.doesNotMatch(procs, /--socket \/run\/ciliademo\//, "the agent is gone");
});
