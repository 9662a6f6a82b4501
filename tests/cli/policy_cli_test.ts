// The `cilia` executable (bin/cilia) as users run it: exit codes, stdout/stderr, -o json.

import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;

async function cilia(
  args: string[],
  stdin?: string,
): Promise<{ code: number; out: string; err: string }> {
  const p = new Deno.Command(`${root}bin/cilia`, {
    args,
    cwd: root,
    stdin: stdin !== undefined ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
    env: { CILIA_DENO: Deno.execPath(), NO_COLOR: "1" },
  }).spawn();
  if (stdin !== undefined) {
    const w = p.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const o = await p.output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
}

async function tmpFile(text: string): Promise<string> {
  const f = await Deno.makeTempFile({ suffix: ".yaml" });
  await Deno.writeTextFile(f, text);
  return f;
}

Deno.test("cilia policy test runs the bundled examples: table, closing line, exit 0", async () => {
  const files = [...Deno.readDirSync(`${root}examples/policies`)].map((e) => e.name).filter((n) =>
    n.endsWith(".scenario.yaml")
  ).sort();
  assert.equal(files.length, 4);
  const r = await cilia(["policy", "test", ...files.map((f) => `examples/policies/${f}`)]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /RESULT\s+QUERY\s+EXPECT\s+VERDICT\s+WHY/);
  assert.match(r.out, /^39 passed, 0 failed$/m);
});

Deno.test("cilia policy test: a failing expectation prints its trace and exits 1; -o json has traces", async () => {
  const src = await Deno.readTextFile(`${root}examples/policies/http-get-public.scenario.yaml`);
  const f = await tmpFile(src.replace(/(path: \/private \}\n\s+expect: )denied/, "$1allowed"));
  try {
    const r = await cilia(["policy", "test", f]);
    assert.equal(r.code, 1);
    assert.match(r.out, /FAIL\s+GET \/private is refused with 403\s+allowed\s+denied/);
    assert.match(
      r.out,
      /L7 HTTP: the request GET \/private matches none of the HTTP rules that apply → the proxy answers HTTP 403/,
    );
    assert.match(r.out, /^8 passed, 1 failed$/m);
    const j = await cilia(["policy", "test", "-o", "json", f]);
    assert.equal(j.code, 1);
    const model = JSON.parse(j.out);
    assert.equal(model.failed, 1);
    assert.ok(
      model.scenarios[0].results[1].trace.some((l: string) =>
        l.startsWith("Final verdict: DENIED")
      ),
    );
  } finally {
    await Deno.remove(f);
  }
});

Deno.test("cilia policy validate: located errors on stderr, exit 1; valid files exit 0", async () => {
  const f = await tmpFile(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: typo}
spec:
  endpointSelector: {}
  ingress:
    - toPort: [{ports: [{port: "80"}]}]
`);
  try {
    const bad = await cilia(["policy", "validate", f]);
    assert.equal(bad.code, 1);
    assert.match(
      bad.err,
      new RegExp(
        `${f}:7:7: error: Unknown field "toPort": did you mean "toPorts"\\? \\(at spec.ingress\\[0\\].toPort\\)`,
      ),
    );
    const good = await cilia([
      "policy",
      "validate",
      "examples/policies/kafka-produce-consume.yaml",
    ]);
    assert.equal(good.code, 0, good.err);
    assert.match(good.out, /valid \(1 policy\)/);
    const json = await cilia(["policy", "validate", "-o", "json", f]);
    assert.equal(JSON.parse(json.out)[0].issues[0].line, 7);
  } finally {
    await Deno.remove(f);
  }
});

Deno.test("cilia policy trace prints the decision chain; -o json carries the verdict", async () => {
  const args = [
    "policy",
    "trace",
    "--policy",
    "examples/policies/http-get-public.yaml",
    "--src-labels",
    "app=frontend",
    "--dst-labels",
    "app=backend",
    "--dport",
    "80/TCP",
  ];
  const ok = await cilia([...args, "--http-method", "GET", "--http-path", "/public/x"]);
  assert.equal(ok.code, 0, ok.err);
  assert.match(ok.out, /selected by CiliumNetworkPolicy default\/backend-get-public \(spec\)/);
  assert.match(ok.out, /Final verdict: ALLOWED/);
  const no = await cilia([
    ...args,
    "--http-method",
    "DELETE",
    "--http-path",
    "/public/x",
    "-o",
    "json",
  ]);
  const j = JSON.parse(no.out);
  assert.equal(j.verdict, "denied");
  assert.equal(j.ingress.l7.status, "denied");
  const world = await cilia([
    "policy",
    "trace",
    "--policy",
    "examples/policies/http-get-public.yaml",
    "--src-ip",
    "203.0.113.9",
    "--dst-labels",
    "app=backend",
    "--dport",
    "80/TCP",
  ]);
  assert.match(world.out, /drop reason 133: Policy denied/);
  assert.match(world.out, /Final verdict: DENIED/);
});

Deno.test("cilia policy lint explains footguns with their location", async () => {
  const f = await tmpFile(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: split}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: api}}]
    - toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
  egress:
    - toEndpoints: [{}]
`);
  try {
    const r = await cilia(["policy", "lint", f]);
    assert.equal(r.code, 3, "warnings only: exit 3");
    assert.match(r.out, /:8:7\s+or-split\s+spec\.ingress\[1\]\s+This rule has ports but no peers/);
    assert.match(r.out, /empty-selector/);
    assert.match(r.out, /dns-blocked/);
    const clean = await cilia(["policy", "lint", "examples/policies/header-token.yaml"]);
    assert.equal(clean.code, 0, clean.out);
  } finally {
    await Deno.remove(f);
  }
});

Deno.test("cilia: usage errors exit 2 on stderr; unknown files name the path", async () => {
  const u = await cilia(["policy", "frobnicate"]);
  assert.equal(u.code, 2);
  assert.match(u.err, /Unknown command "policy frobnicate"/);
  const bad = await cilia(["policy", "test", "-o", "xml", "x"]);
  assert.equal(bad.code, 2);
  assert.match(bad.err, /Invalid output format "xml": expected one of table, json, yaml/);
  const missing = await cilia(["policy", "validate", "/nonexistent.yaml"]);
  assert.equal(missing.code, 1);
  assert.match(missing.err, /Cannot read "\/nonexistent.yaml": no such file or directory/);
  const stdin = await cilia(
    ["policy", "validate", "-"],
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: s}\nspec: {endpointSelector: {}}\n",
  );
  assert.equal(stdin.code, 0, stdin.err);
});

Deno.test("cilia policy test: several scenarios in one file run in isolation", async () => {
  const one = (name: string, clientIp: string, expect: string) =>
    `name: ${name}
policies:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: p, namespace: default}
    spec:
      endpointSelector: {matchLabels: {app: db}}
      ingress: [{fromCIDR: [203.0.113.0/24]}]
endpoints:
  - {name: db, labels: {app: db, version: 2}, ip: 10.0.0.1}
  - {name: client, labels: {app: client}, ip: ${clientIp}}
queries:
  - {from: {cidr: 203.0.113.9}, to: db, port: 5432, expect: ${expect}}
  - {from: {cidr: 198.51.100.9}, to: db, port: 5432, expect: denied}
`;
  const f = await tmpFile(
    `${one("first", "10.0.0.2", "allowed")}---\n${one("second", "203.0.113.9", "denied")}`,
  );
  try {
    const r = await cilia(["policy", "test", "-o", "json", f]);
    const model = JSON.parse(r.out);
    assert.equal(model.scenarios.length, 2);
    assert.deepEqual(model.scenarios.map((s: { name: string }) => s.name), ["first", "second"]);
    // In the second scenario 203.0.113.9 is the client pod: a CIDR rule never matches a pod, and
    // nothing of the first scenario (where it was the world) leaks into the second.
    assert.equal(model.passed, 4, r.err);
    assert.equal(r.code, 0);
  } finally {
    await Deno.remove(f);
  }
});
