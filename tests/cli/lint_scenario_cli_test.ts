// `cilia policy lint`, `validate` and `test` on the newcomer's path (issue 14): lint over a set of
// files, silencing, exit codes, empty inputs, scenario files that reference policy files, a typo
// in a query reported at its line while the rest runs, and --junit.

import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;

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

const APP = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: app, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
    - toEndpoints: [{matchLabels: {app: db}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`;

const ALLOW_DNS = `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: allow-dns}
spec:
  endpointSelector: {}
  egress:
    - toEndpoints:
        - matchLabels: {io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
          rules: {dns: [{matchPattern: "*"}]}
`;

async function withDir(
  files: Record<string, string>,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    for (const [n, text] of Object.entries(files)) await Deno.writeTextFile(`${dir}/${n}`, text);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("cilia policy lint: the files are one set; the allow-DNS policy is not flagged", async () => {
  await withDir({ "app.yaml": APP, "dns.yaml": ALLOW_DNS }, async (dir) => {
    const alone = await cilia(["policy", "lint", `${dir}/app.yaml`]);
    assert.equal(alone.code, 3, alone.out + alone.err);
    assert.match(alone.out, /dns-blocked/);
    const set = await cilia(["policy", "lint", `${dir}/app.yaml`, `${dir}/dns.yaml`]);
    assert.equal(set.code, 0, set.out + set.err);
    assert.match(set.out, /^no warnings$/m);
    const bundled = await cilia(["policy", "lint", "examples/policies/"]);
    assert.equal(bundled.code, 0, bundled.out + bundled.err);
  });
});

Deno.test("cilia policy lint: --disable and the cilia.io/lint-ignore annotation silence rules", async () => {
  const ignored = APP.replace(
    "metadata: {name: app, namespace: default}",
    "metadata:\n  name: app\n  namespace: default\n  annotations: {cilia.io/lint-ignore: dns-blocked}",
  );
  await withDir({ "app.yaml": APP, "ignored.yaml": ignored }, async (dir) => {
    const off = await cilia(["policy", "lint", "--disable", "dns-blocked", `${dir}/app.yaml`]);
    assert.equal(off.code, 0, off.out);
    const annotated = await cilia(["policy", "lint", `${dir}/ignored.yaml`]);
    assert.equal(annotated.code, 0, annotated.out);
  });
});

Deno.test("cilia policy lint: typos, allow-all NetworkPolicies and host bits are warned about", async () => {
  const typos = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: typo, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web, io.kubernetes.pod.namespac: default}}
  ingress: [{fromCIDR: [10.1.0.1/16]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{}]
`;
  await withDir({ "t.yaml": typos }, async (dir) => {
    const r = await cilia(["policy", "lint", "-o", "json", `${dir}/t.yaml`]);
    assert.equal(r.code, 3, r.err);
    const w = JSON.parse(r.out) as { code: string; message: string; line: number }[];
    const by = (code: string) => w.find((x) => x.code === code);
    assert.match(by("key-typo")!.message, /did you mean "io\.kubernetes\.pod\.namespace"\?/);
    assert.equal(by("key-typo")!.line, 5);
    assert.match(
      by("cidr-host-bits")!.message,
      /"10\.1\.0\.1\/16" has host bits set.*"10\.1\.0\.0\/16"/,
    );
    assert.match(by("allow-all")!.message, /allows every peer/);
    assert.equal(by("allow-all")!.line, 13);
  });
});

Deno.test("cilia policy validate: API-server rules for labels; an empty input is an error", async () => {
  const bad = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: p
  labels: {-bad: x}
  annotations: {"a b": x}
spec:
  endpointSelector: {}
`;
  const badSelector = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {"-k": v, "k8s:ok": v}}
`;
  await withDir({ "bad.yaml": bad, "sel.yaml": badSelector, "empty.yaml": "" }, async (dir) => {
    const r = await cilia(["policy", "validate", `${dir}/bad.yaml`]);
    assert.equal(r.code, 1);
    assert.match(r.err, /bad\.yaml:5:\d+: error: Invalid label key "-bad"/);
    assert.match(r.err, /bad\.yaml:6:\d+: error: Invalid annotation key "a b"/);
    const sel = await cilia(["policy", "validate", `${dir}/sel.yaml`]);
    assert.equal(sel.code, 1);
    assert.match(sel.err, /sel\.yaml:5:\d+: error: Invalid label key "-k"/);
    assert.ok(!sel.err.includes("k8s:ok"), sel.err);
    const empty = await cilia(["policy", "validate", `${dir}/empty.yaml`]);
    assert.equal(empty.code, 1);
    assert.match(empty.err, /empty\.yaml: error: The input has no policies/);
    const allowed = await cilia(["policy", "validate", "--allow-empty", `${dir}/empty.yaml`]);
    assert.equal(allowed.code, 0, allowed.err);
    assert.match(allowed.err, /warning: The input has no policies/);
  });
});

Deno.test("cilia policy test: file references, an unknown endpoint at its line, key typos, --junit", async () => {
  const scenario = `name: typos
policies:
  - file: ../policies/app.yaml
endpoints:
  - {name: web, labels: {app: web}}
  - {name: db, labels: {app: db}}
queries:
  - {from: web, to: db, port: 5432, expect: allowed}
  - {from: wbe, to: db, port: 5432, expect: allowed}
  - {from: web, to: db, port: 22, expect: denied}
`;
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/policies`);
    await Deno.mkdir(`${dir}/tests`);
    await Deno.writeTextFile(`${dir}/policies/app.yaml`, APP.replace("{app: web}}", "{ap: web}}"));
    await Deno.writeTextFile(`${dir}/tests/s.scenario.yaml`, scenario);
    const junit = `${dir}/junit.xml`;
    const r = await cilia(["policy", "test", "--junit", junit, `${dir}/tests/s.scenario.yaml`]);
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /s\.scenario\.yaml:9: error: Query 2: Unknown endpoint "wbe": expected one of web, db \(did you mean "web"\?\)/,
    );
    assert.match(
      r.err,
      /app\.yaml:5: warning: No endpoint carries the label key "ap".*did you mean "app"\?/,
    );
    assert.match(r.out, /^1 passed, 1 failed, 1 error$/m);
    const xml = await Deno.readTextFile(junit);
    assert.match(xml, /tests="3" failures="1" errors="1"/);
    const j = await cilia(["policy", "test", "-o", "json", `${dir}/tests/s.scenario.yaml`]);
    const model = JSON.parse(j.out);
    assert.match(model.scenarios[0].errors[0].message, /Unknown endpoint "wbe"/);
    const missing = await cilia(["policy", "test", "-o", "json", `${dir}/policies/app.yaml`]);
    assert.equal(missing.code, 1);
    assert.match(JSON.parse(missing.out).failures[0].message, /not a scenario/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const bundled = await cilia([
    "policy",
    "test",
    "examples/policies/tests/three-tier.scenario.yaml",
  ]);
  assert.equal(bundled.code, 0, bundled.err);
  assert.match(bundled.out, /^5 passed, 0 failed$/m);
});
