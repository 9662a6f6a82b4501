// `cilia connectivity test` end to end, kept short with --test: a subset of the families passes
// with every drop matched to the agent's flows, a deliberately flipped expectation
// (CILIA_CONNECTIVITY_FLIP) is a failure the table names with exit code 1, and Ctrl-C removes the
// lab. Needs root.
import assert from "node:assert/strict";
import { needsRoot } from "../helpers/root.ts";

const root = new URL("../../", import.meta.url).pathname;
const dec = new TextDecoder();

function cilia(args: string[], env: Record<string, string> = {}) {
  return new Deno.Command(`${root}bin/cilia`, {
    args,
    env: { CILIA_DENO: Deno.execPath(), NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

async function labsLeft(): Promise<string[]> {
  const out = await new Deno.Command("ip", { args: ["netns", "list"], stdout: "piped" }).output();
  return dec.decode(out.stdout).split("\n").filter((l) => l.startsWith("ciliact"));
}

Deno.test({
  name: "cilia connectivity test: a subset passes, a flipped expectation is named and fails",
  ...needsRoot(["busybox", "ping"]),
}, async () => {
  const before = await labsLeft();
  const o = await cilia(
    ["connectivity", "test", "--test", "ingress-default-deny/tcp|deny-over-allow|cidr"],
    { CILIA_CONNECTIVITY_FLIP: "cidr/cidr-allowed" },
  ).output();
  const out = dec.decode(o.stdout), err = dec.decode(o.stderr);
  assert.equal(o.code, 1, `exit 1 when a case failed:\n${out}${err}`);
  const row = (name: string) => out.split("\n").find((l) => l.startsWith(`${name} `)) ?? "";
  assert.match(row("cidr/cidr-allowed"), /drop 133 by \(flipped\)\s+allowed\s+FAIL/);
  assert.match(out, /^failing: cidr\/cidr-allowed$/m);
  for (
    const [name, got] of [
      ["ingress-default-deny/tcp-denied", "drop 133 by backend-deny-ingress"],
      ["deny-over-allow/denied-port", "drop 181 by backend-deny-9090"],
      ["deny-over-allow/allowed-port", "allowed"],
      ["cidr/except-denied", "drop 133 by client-to-cidr"],
    ]
  ) assert.match(row(name!), new RegExp(`${got!.replace(/[()]/g, "\\$&")}\\s+ok$`), out);
  assert.match(out, /^4 passed, 1 failed/m);
  assert.deepEqual(await labsLeft(), before, "the lab is removed");
});

Deno.test({
  name: "cilia connectivity test: Ctrl-C removes the lab",
  ...needsRoot(["busybox", "ping"]),
}, async () => {
  const before = await labsLeft();
  const child = cilia(["connectivity", "test", "--test", "no-policy"]).spawn();
  for (let i = 0; i < 100 && (await labsLeft()).length <= before.length + 2; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGINT");
  const o = await child.output();
  assert.equal(o.code, 130, dec.decode(o.stderr));
  assert.match(dec.decode(o.stderr), /interrupted, removing the lab/);
  assert.deepEqual(await labsLeft(), before, "nothing is left after Ctrl-C");
});

Deno.test({
  name: "cilia connectivity test --nodes 2: cases across two nodes (etcd, tunnel mode)",
  ...needsRoot(["busybox", "ping", "etcd"]),
}, async () => {
  const before = await labsLeft();
  const o = await cilia([
    ...["connectivity", "test", "--nodes", "2", "-o", "json", "--test"],
    "ingress-default-deny|entities/host-allowed|deny-over-allow/denied-port|cidr/except",
  ]).output();
  const out = dec.decode(o.stdout), err = dec.decode(o.stderr);
  assert.equal(o.code, 0, `${out}${err}`);
  const { results } = JSON.parse(out) as { results: { name: string; got: string; ok: boolean }[] };
  assert.deepEqual(
    results.map((r) => [r.name, r.got, r.ok]),
    [
      ["ingress-default-deny/tcp-denied", "drop 133 by backend-deny-ingress", true],
      ["ingress-default-deny/icmp-denied", "drop 133 by backend-deny-ingress", true],
      ["ingress-default-deny/unselected-egress", "allowed", true],
      ["entities/host-allowed", "allowed", true],
      ["cidr/except-denied", "drop 133 by client-to-cidr", true],
      ["deny-over-allow/denied-port", "drop 181 by backend-deny-9090", true],
    ],
  );
  assert.deepEqual(await labsLeft(), before, "the lab is removed");
});
