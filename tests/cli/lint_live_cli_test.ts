// `cilia policy lint --live` against a real agent process on a temp socket: the agent's endpoints
// are the known ones, so a selector key none of them carries gets key-typo (offline it does not);
// without files the policies in force are linted; no agent is a clear error.

import assert from "node:assert/strict";
import { endpointBody, root, spawnAgent } from "../agent/_fixture.ts";

async function cilia(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command(`${root}bin/cilia`, {
    args,
    cwd: root,
    stdin: "null",
    env: { CILIA_DENO: Deno.execPath(), NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
}

// `tier` is a real key of the endpoints; `teir` is a typo no well-known key is near.
const POLICY = (key: string) =>
  `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {${key}: web}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`;

Deno.test("cilia policy lint --live: key-typo against the agent's endpoints", async (t) => {
  const agent = await spawnAgent({ node: "node-lint", args: ["--pod-cidr", "10.221.0.0/24"] });
  const H = ["-H", `unix://${agent.socket}`];
  const dir = await Deno.makeTempDir({ prefix: "cilia-lint-live-" });
  try {
    await t.step("no endpoints yet: a note, and no key can be judged", async () => {
      await Deno.writeTextFile(`${dir}/typo.yaml`, POLICY("teir"));
      const r = await cilia(["policy", "lint", "--live", ...H, `${dir}/typo.yaml`]);
      assert.equal(r.code, 0, r.out + r.err);
      assert.match(r.err, /the agent has no endpoints/);
    });
    for (
      const [id, app, ip] of [[1, "web", "10.221.0.5"], [2, "db", "10.221.0.6"]] as const
    ) {
      const res = await agent.api.call(
        "PUT",
        `/v1/endpoint/${id}`,
        endpointBody(app, { app, tier: app }, { ipv4: ip }),
      );
      assert.equal(res.status, 201);
    }
    await t.step("a key no endpoint carries: key-typo with a suggestion, exit 3", async () => {
      const offline = await cilia(["policy", "lint", `${dir}/typo.yaml`]);
      assert.equal(offline.code, 0, offline.out + offline.err);
      const r = await cilia(["policy", "lint", "--live", ...H, "-o", "json", `${dir}/typo.yaml`]);
      assert.equal(r.code, 3, r.out + r.err);
      const [w, ...more] = JSON.parse(r.out);
      assert.deepEqual(more, []);
      assert.equal(w.code, "key-typo");
      assert.equal(w.path, "spec.ingress[0]");
      assert.equal(w.line, 7);
      assert.match(w.message, /No endpoint carries the label key "teir".*did you mean "tier"\?/);
    });
    await t.step("a key the endpoints carry: clean", async () => {
      await Deno.writeTextFile(`${dir}/ok.yaml`, POLICY("tier"));
      const r = await cilia(["policy", "lint", "--live", ...H, `${dir}/ok.yaml`]);
      assert.equal(r.code, 0, r.out + r.err);
      assert.match(r.out, /no warnings/i);
    });
    await t.step("no files: the policies in force are linted", async () => {
      const put = await agent.api.call("PUT", "/v1/policy", POLICY("teir"));
      assert.ok(put.status === 200 || put.status === 202, `import: ${put.status}`);
      const r = await cilia(["policy", "lint", "--live", ...H]);
      assert.equal(r.code, 3, r.out + r.err);
      assert.match(r.out, /key-typo/);
      assert.match(r.out, /policies in force/);
    });
    await t.step("no agent: the error names the socket, exit 1", async () => {
      const r = await cilia(["policy", "lint", "--live", "-H", `unix://${dir}/none.sock`]);
      assert.notEqual(r.code, 0);
      assert.match(r.err, /Cannot reach the cilia agent at unix:\/\/.*none\.sock/);
    });
  } finally {
    await agent.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
