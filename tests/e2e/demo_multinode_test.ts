// `deno task demo --nodes 2 [--routing-mode native] --once`, as the README runs it: in both
// routing modes the report shows the cross-node connections with the verdict the policy gives
// them, each drop as the receiving node's flows tell it (reason, the sender's identity and labels),
// it exits 0 and leaves no namespace, mount, directory or process behind. A bad --nodes is an error
// that names it. Needs root and etcd.
import assert from "node:assert/strict";
import { KERNEL_TOOLS, needs } from "../helpers/root.ts";

const root = new URL("../../", import.meta.url).pathname;
const dec = new TextDecoder();

async function demo(args: string[]) {
  const o = await new Deno.Command(`${root}bin/deno`, {
    args: ["task", "demo", ...args],
    cwd: root,
    env: { NO_COLOR: "1" },
    stdin: "null",
  }).output();
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
}

async function leftovers(tag: string): Promise<string[]> {
  const netns = dec.decode(
    (await new Deno.Command("ip", { args: ["netns", "list"] }).output()).stdout,
  );
  const found = netns.split("\n").filter((l) => l.startsWith(`cl${tag}-`));
  if (await Deno.lstat(`/tmp/cilia-lab-${tag}`).then(() => true, () => false)) {
    found.push(`/tmp/cilia-lab-${tag}`);
  }
  if ((await Deno.readTextFile("/proc/self/mountinfo")).includes(`cilia-lab-${tag}`)) {
    found.push("a mount");
  }
  const ps = dec.decode((await new Deno.Command("ps", { args: ["-eo", "args"] }).output()).stdout);
  if (ps.includes(`/tmp/cilia-lab-${tag}/`)) found.push("a process");
  return found;
}

Deno.test({
  name: "deno task demo --nodes 2: cross-node verdicts from the receiver's flows, both modes",
  ...needs({ root: true, binaries: [...KERNEL_TOOLS, "etcd"] }),
}, async (t) => {
  for (const mode of ["tunnel", "native"]) {
    await t.step(`--routing-mode ${mode}`, async () => {
      const { code, out, err } = await demo(["--nodes", "2", "--routing-mode", mode, "--once"]);
      assert.equal(code, 0, `${out}\n${err}`);
      const lines = [
        /^ {2}nodes {6}node-1 {2}192\.0\.2\.1 +pods 10\.200\.1\.0\/24$/m,
        /^ {2}pods \(CNI\) frontend 10\.200\.1\.\d+ +on node-1 +app=frontend +identity (\d+)/m,
        /^ +backend +10\.200\.2\.\d+ +on node-2 +app=backend/m,
        /Imported 3 policies/,
        /frontend@node-1 → backend@node-2 +TCP 8080 +allowed +backend ingress on node-2: allow-rule, \d+ \(app=frontend\)/,
        /frontend@node-1 → backend@node-2 +TCP 9090 +dropped +POLICY_DENIED \(133\) at backend ingress on node-2: \d+ \(app=frontend\) → \d+ \(app=backend\)/,
        /frontend@node-1 → backend@node-2 +ping +dropped +POLICY_DENIED \(133\) at backend ingress on node-2/,
        /backend@node-2 → db@node-1 +TCP 5432 +allowed +db ingress on node-1/,
        /4 flows: 2 allowed, 2 dropped — every verdict as the policy says/,
        /\[node-2\] 10\.200\.1\.\d+(:\d+)? \(app=frontend, ID:\d+\) -> default\/backend(:9090)? \(app=backend, ID:\d+\) drop INGRESS/,
        /removed everything the demo made/,
      ];
      for (const l of lines) assert.match(out, l);
      if (mode === "tunnel") assert.match(out, /knows frontend .* tunnel endpoint 192\.0\.2\.1/);
      else assert.doesNotMatch(out, /tunnel endpoint/);
      assert.doesNotMatch(out, /UNEXPECTED/);
      const tag = /in cl([0-9a-f]{4})-ul/.exec(out)?.[1];
      assert.ok(tag, "the report names the lab");
      assert.deepEqual(await leftovers(tag), []);
    });
  }
  await t.step("a bad --nodes is an error naming it", async () => {
    const { code, err } = await demo(["--nodes", "one", "--once"]);
    assert.equal(code, 1);
    assert.match(err, /Invalid --nodes "one": expected a number from 2 to 4/);
  });
});
