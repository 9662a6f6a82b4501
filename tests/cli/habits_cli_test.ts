// The CLI's habits as a newcomer meets them (issue 14): help for every command from the one
// registry, --version, shell completion, colour only on request, usage errors exit 2, lint's exit
// codes, JUnit output and sentences that say what was given and what is accepted.

import assert from "node:assert/strict";
import { COMMANDS } from "../../cli/commands.ts";
import { renderJunit } from "../../cli/junit.ts";
import { table } from "../../cli/output.ts";

const root = new URL("../../", import.meta.url).pathname;

async function cilia(
  args: string[],
  env: Record<string, string> = { NO_COLOR: "1" },
): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command(`${root}bin/cilia`, {
    args,
    cwd: root,
    stdin: "null",
    env: { CILIA_DENO: Deno.execPath(), ...env },
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
}

async function tmpDir(files: Record<string, string>): Promise<string> {
  const dir = await Deno.makeTempDir();
  for (const [name, text] of Object.entries(files)) {
    await Deno.writeTextFile(`${dir}/${name}`, text);
  }
  return dir;
}

Deno.test("cilia: every registered command has its own help page with an example", async (t) => {
  for (const c of COMMANDS) {
    await t.step(c.name, async () => {
      const words = c.name.split(" ");
      const viaFlag = await cilia([...words, "--help"]);
      assert.equal(viaFlag.code, 0, viaFlag.err);
      assert.match(viaFlag.out, new RegExp(`^cilia ${c.name} — `));
      const viaHelp = await cilia(["help", ...words]);
      assert.match(viaHelp.out, /\nExample:\n {2}cilia /);
      // Commands with their own flag parser print their own page for --help.
      if (!c.ownHelp) assert.equal(viaHelp.out, viaFlag.out);
    });
  }
  const global = await cilia(["help"]);
  assert.equal(global.code, 0);
  for (const c of COMMANDS) assert.ok(global.out.includes(c.name), c.name);
  assert.match(global.out, /Exit codes:\n {2}0 .*\n {2}1 .*\n {2}2 .*usage.*\n {2}3 .*lint/);
  const unknown = await cilia(["help", "policy", "frob"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.err, /Unknown command "policy frob": expected one of "policy validate"/);
});

Deno.test("cilia --version prints the version and the engine's build id", async () => {
  const r = await cilia(["--version"]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^cilia \d+\.\d+\.\d+ \(policy engine [0-9a-f]{12}, deno [\d.]+\)\n$/);
});

Deno.test("cilia completion bash|zsh|fish names the commands and flags; other shells exit 2", async () => {
  for (const shell of ["bash", "zsh", "fish"]) {
    const r = await cilia(["completion", shell]);
    assert.equal(r.code, 0, r.err);
    for (const w of ["policy", "trace", "src-ip", "junit", "completion"]) {
      assert.ok(r.out.includes(w), `${shell} completion lacks ${w}`);
    }
  }
  const bash = await cilia(["completion", "bash"]);
  const check = await new Deno.Command("bash", { args: ["-n", "-c", bash.out] }).output();
  assert.equal(check.code, 0, new TextDecoder().decode(check.stderr));
  const bad = await cilia(["completion", "tcsh"]);
  assert.equal(bad.code, 2);
  assert.match(bad.err, /Unsupported shell "tcsh" for completion: expected bash, zsh or fish/);
});

Deno.test("cilia: no colour when not a terminal, with NO_COLOR or --no-color", async () => {
  const args = ["policy", "test", "examples/policies/three-tier.scenario.yaml"];
  for (const [env, extra] of [[{}, []], [{ NO_COLOR: "1" }, []], [{}, ["--no-color"]]] as const) {
    const r = await cilia([...args, ...extra], env);
    assert.equal(r.code, 0, r.err);
    assert.ok(!r.out.includes("\x1b["), "escape codes in piped output");
  }
  // The table measures cells as the terminal shows them, so coloured cells stay aligned.
  const t = table([{ a: "\x1b[32mpass\x1b[0m", b: "x" }, { a: "FAIL!", b: "y" }], [
    { header: "R", value: (r) => r.a },
    { header: "B", value: (r) => r.b },
  ]);
  assert.deepEqual(t.replaceAll("\x1b[32m", "").replaceAll("\x1b[0m", "").split("\n"), [
    "R      B",
    "pass   x",
    "FAIL!  y",
  ]);
});

Deno.test("cilia: bad flag values are usage errors (exit 2) that say what is accepted", async () => {
  const base = [
    "policy",
    "trace",
    "--policy",
    "examples/policies/three-tier.yaml",
    "--dport",
    "80",
  ];
  const ip = await cilia([...base, "--src-ip", "10.0.0.300", "--dst-labels", "app=db"]);
  assert.equal(ip.code, 2);
  assert.match(ip.err, /Invalid --src-ip "10\.0\.0\.300": expected an IPv4 or IPv6 address/);
  const entity = await cilia([...base, "--src-entity", "wrld", "--dst-labels", "app=db"]);
  assert.equal(entity.code, 2);
  assert.match(entity.err, /Invalid --src-entity "wrld": expected one of .*world/);
  const rule = await cilia(["policy", "lint", "--disable", "dns-blockd", "examples/policies"]);
  assert.equal(rule.code, 2);
  assert.match(rule.err, /Unknown lint rule "dns-blockd" in --disable/);
});

Deno.test("cilia: messages name the value given and what is accepted", async () => {
  const dir = await tmpDir({
    "proto.yaml": `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress: [{toPorts: [{ports: [{port: "80", protocol: tcp}]}]}]
`,
    "nokind.yaml": "apiVersion: cilium.io/v2\nmetadata: {name: p}\n",
  });
  try {
    const r = await cilia(["policy", "validate", `${dir}/proto.yaml`, `${dir}/nokind.yaml`]);
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /proto\.yaml:6:\d+: error: Invalid protocol "tcp": expected TCP, UDP, SCTP or ANY \(case-sensitive\): did you mean "TCP"\?/,
    );
    assert.match(
      r.err,
      /nokind\.yaml:1:1: error: The document has no "kind": expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy/,
    );
    assert.ok(!r.err.includes("the string"), r.err);
    assert.ok(!r.err.includes("kind null"), r.err);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("renderJunit() escapes names and counts failures and errors", () => {
  const xml = renderJunit([{
    name: 'a <b> & "c"',
    file: "x.yaml",
    cases: [
      { name: "ok" },
      { name: "bad", failure: { message: "expected allowed, got denied", trace: ["x < y"] } },
      { name: "query 3", error: 'Unknown endpoint "z"' },
    ],
  }]);
  assert.match(xml, /<testsuites name="cilia policy test" tests="3" failures="1" errors="1">/);
  assert.match(xml, /<testsuite name="a &lt;b&gt; &amp; &quot;c&quot;" file="x.yaml"/);
  assert.match(xml, /<failure message="expected allowed, got denied">x &lt; y<\/failure>/);
  assert.match(xml, /<error message="Unknown endpoint &quot;z&quot;"\/>/);
});
