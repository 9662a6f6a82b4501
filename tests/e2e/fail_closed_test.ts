// Fail closed in the kernel (issue 18), with real packets. A fault-injecting `bpftool` (a named
// test fake, first on the agent's PATH) makes policy-map batch writes fail the way a full map
// does ("No space left on device"), after applying the first half of the batch with the real
// bpftool (a partial write, as `bpftool batch` leaves one). Under the fault: a new pod's CNI ADD
// fails and leaves nothing; a narrowed policy or a new deny never leaves the wider policy alone
// in force (the endpoint drops everything, reason 203, until written); partial writes of a
// policy that is replaced before the fault clears never stay in the map. After the fault clears
// the agent's retry loop writes the policy in force with no other event. Needs root.
import assert from "node:assert/strict";
import { BpfTool, bytesFromHex } from "../../agent/datapath/bpftool.ts";
import { decodePolicyEntry } from "../../agent/datapath/policy_map.ts";
import { CiliaNode, type TestPod } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const OK_MS = 3000, DENY_MS = 400; // OK_MS bounds connections that must pass: generous

const FAKE_BPFTOOL = `#!/bin/sh
# Test fake: fails policy-map batch writes like a full map when the fault file names a mode.
real=/usr/sbin/bpftool
mode=$(cat "$CILIA_TEST_FAULT_FILE" 2>/dev/null)
file=""
prev=""
for a in "$@"; do [ "$prev" = file ] && file=$a; prev=$a; done
if [ -n "$mode" ] && [ -n "$file" ] && grep -q "cilia_policy" "$file"; then
  case "$mode" in
    update) pattern="map update pinned .*cilia_policy" ;;
    delete) pattern="map delete pinned .*cilia_policy" ;;
    *) pattern="cilia_policy" ;;
  esac
  if grep -q "$pattern" "$file"; then
    n=$(wc -l < "$file")
    half=$((n / 2))
    if [ "$half" -gt 0 ]; then
      head -n "$half" "$file" > "$file.half"
      "$real" batch file "$file.half" >/dev/null 2>&1
      rm -f "$file.half"
    fi
    echo "Error: update failed: No space left on device" >&2
    exit 255
  fi
fi
exec "$real" "$@"
`;

const cnp = (name: string, spec: string) =>
  `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}, namespace: default}
spec:
${spec.replace(/^/gm, "  ")}
`;

const ONLY_A = (ports: number[]) =>
  cnp(
    "b-ingress",
    `endpointSelector: {matchLabels: {app: b}}
ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [${ports.map((p) => `{port: "${p}", protocol: TCP}`).join(", ")}]}]
`,
  );

const DENY_A = cnp(
  "b-deny-a",
  `endpointSelector: {matchLabels: {app: b}}
ingressDeny:
  - fromEndpoints: [{matchLabels: {app: a}}]
`,
);

const ALLOW_C = cnp(
  "b-allow-c",
  `endpointSelector: {matchLabels: {app: b}}
ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
    toPorts: [{ports: [{port: "7002", protocol: TCP}, {port: "7005", protocol: TCP}]}]
`,
);

Deno.test({
  name: "fail closed: injected policy-map write faults never open a pod (real packets)",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-fault-" });
  const faultFile = `${dir}/fault`;
  await Deno.writeTextFile(`${dir}/bpftool`, FAKE_BPFTOOL, { mode: 0o755 });
  const fault = (mode: "" | "update" | "delete" | "all") => Deno.writeTextFile(faultFile, mode);
  await fault("");
  try {
    await using n = await CiliaNode.create({
      agentEnv: {
        PATH: `${dir}:${Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin"}`,
        CILIA_TEST_FAULT_FILE: faultFile,
        // Map writes through bpftool (the agent writes in process otherwise), where the fake is.
        CILIA_MAP_WRITER: "bpftool",
      },
    });
    const a = await n.addPod("a", { app: "a" });
    const c = await n.addPod("c", { app: "c" });
    const reach = (from: TestPod, to: TestPod, port: number, allowed: boolean) =>
      n.peer(from.netns).probe("tcp", to.ipv4, port, allowed ? OK_MS : DENY_MS);
    const expect = async (what: string, from: TestPod, to: TestPod, port: number, ok: boolean) =>
      assert.equal(await reach(from, to, port, ok), ok, what);
    const ready = async (name: string) => {
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline) {
        const ep = (await n.call("GET", `/v1/endpoint/default/${name}`)).body;
        if (ep.state === "ready") return ep;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`endpoint ${name} did not become ready:\n${n.log.slice(-3000)}`);
    };
    await n.policy(ONLY_A([7000, 7001]));

    await t.step("CNI ADD under a write fault fails and leaves nothing behind", async () => {
      await fault("all");
      await assert.rejects(() => n.addPod("b0", { app: "b" }), /No space left on device/);
      const eps = (await n.call("GET", "/v1/endpoint")).body as { name: string }[];
      assert.ok(!eps.some((e) => e.name === "b0"), "no endpoint kept");
      const links = await n.lab.run(n.node.netns, ["ip", "-o", "link", "show"]);
      const netnsLinks = await n.lab.run(`${n.lab.prefix}b0`, ["ip", "-o", "link", "show"]);
      assert.doesNotMatch(netnsLinks, /eth0/, "no interface left in the pod");
      assert.equal(
        links.split("\n").filter((l) => /lxc/.test(l)).length,
        2,
        `only a's and c's host interfaces: ${links}`,
      );
      await fault("");
    });

    const b = await n.addPod("b", { app: "b" });
    for (const port of [7000, 7001, 7002]) await n.peer(b.netns).listen("tcp", port);
    await expect("a → b:7001 before the faults", a, b, 7001, true);
    await expect("c → b:7000 before the faults", c, b, 7000, false);

    await t.step("narrowing while deletes fail: never the wide policy alone", async () => {
      await fault("delete");
      const r = await n.call("PUT", "/v1/policy", ONLY_A([7000]));
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body.realised, false);
      const { result, events } = await n.withEvents(() => reach(a, b, 7001, false), {
        until: (e) => e.type === "drop" && e.subtype === 203,
      });
      assert.equal(result, false, "a → b:7001 (no longer allowed) does not pass");
      assert.ok(events.some((e) => e.type === "drop" && e.subtype === 203), "drop reason 203");
      const s = (await n.call("GET", "/v1/status")).body;
      assert.equal(s.realised, false);
      assert.ok(s.endpoints.problems.some((p: { name: string }) => p.name === "default/b"));
      const ipcache = s.datapath.maps.find((m: { name: string }) => m.name === "cilia_ipcache");
      assert.equal(ipcache.max, 524288, "the default --bpf-ipcache-max");
      assert.ok(ipcache.entries > 0 && ipcache.pressure === ipcache.entries / ipcache.max);
      await fault("");
      await ready("b");
      await expect("a → b:7000 after recovery", a, b, 7000, true);
      await expect("a → b:7001 after recovery (narrowed)", a, b, 7001, false);
    });

    await t.step("a new deny while updates fail is in force at once (the pod drops)", async () => {
      await fault("update");
      const r = await n.call("PUT", "/v1/policy", DENY_A);
      assert.equal(r.status, 202, JSON.stringify(r.body));
      await expect("a → b:7000 under the fault", a, b, 7000, false);
      await fault("");
      await ready("b");
      await expect("a → b:7000 denied after recovery", a, b, 7000, false);
      assert.equal((await n.call("DELETE", "/v1/policy?name=b-deny-a")).status, 200);
      await expect("a → b:7000 once the deny is gone", a, b, 7000, true);
    });

    await t.step("partial writes of a policy replaced before recovery never stay", async () => {
      const bId = (await n.call("GET", "/v1/endpoint/default/b")).body.id as number;
      const cIdentity = (await n.call("GET", "/v1/endpoint/default/c")).body.identity as number;
      const keysForC = async () => {
        const rows = await new BpfTool().mapDump(`${n.bpffs}/maps/cilia_policy`);
        return rows.filter((r) => {
          if (!r.value) return false;
          const [ep, e] = decodePolicyEntry(bytesFromHex(r.key), bytesFromHex(r.value));
          return ep === bId && e.identity === cIdentity;
        }).length;
      };
      await fault("update");
      const rc = await n.call("PUT", "/v1/policy", ALLOW_C);
      assert.equal(rc.status, 202, JSON.stringify(rc.body));
      assert.ok(
        await keysForC() > 0,
        "the fault left part of the batch in the map",
      );
      await expect("c → b:7002 under the fault", c, b, 7002, false);
      assert.equal((await n.call("DELETE", "/v1/policy?name=b-allow-c")).status, 202);
      await fault("");
      await ready("b");
      assert.equal(await keysForC(), 0, "no key of the replaced policy stays");
      await expect("c → b:7002 (allowed only by the removed policy)", c, b, 7002, false);
      await expect("a → b:7000 still allowed", a, b, 7000, true);
      const resolved = (await n.call("GET", "/v1/policy/resolved/default/b")).body;
      assert.equal(resolved.revision, resolved.desiredRevision);
    });
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
