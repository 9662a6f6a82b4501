// Malformed invocations of bin/cilia (unknown flags, missing values, bad formats, binary files as
// policies, a directory of garbage, an agent that is not there). Properties: exit 1 (failed) or
// 2 (bad usage); stderr has a message, one line for usage errors; never a stack trace (unless
// CILIA_DEBUG is set); no raw control characters from the input reach the terminal.

import { Findings, Rand } from "./_rand.ts";
import { aliasBomb } from "./_mutate_values.ts";

const root = new URL("../../", import.meta.url).pathname;
const STACK = /^\s+at .*(:\d+:\d+\)?|<anonymous>)$|^error: Uncaught|^Stack backtrace:/m;
// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/;

async function cilia(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(`${root}bin/cilia`, {
    args,
    env: { CILIA_DENO: Deno.execPath(), NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function garbageDir(): Promise<{ dir: string; binary: string }> {
  const dir = await Deno.makeTempDir({ prefix: "cilia-cli-fuzz-" });
  const r = new Rand(0xbad);
  const binary = `${dir}/binary.dat`;
  const bytes = r.bytes(4096);
  bytes.set([0x1b, 0x5b, 0x32, 0x4a, 0x07, 0x0d], 100); // ESC [2J, BEL, CR: terminal tricks
  await Deno.writeFile(binary, bytes);
  const files: Record<string, string | Uint8Array> = {
    "a-binary.yaml": bytes,
    "b-kind-tostring.yaml": "apiVersion: cilium.io/v2\nkind: toString\nmetadata: {name: x}\n",
    "c-truncated.json": '{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "spec": {',
    "d-alias-bomb.yaml": aliasBomb(9, 9),
    "e-deep.json": "[".repeat(20_000) + "]".repeat(20_000),
    "f-empty.yml": "",
    "g-nul.yaml": "apiVersion: cilium.io/v2\u0000\nkind: CiliumNetworkPolicy\n",
    "h-escape.yaml": "apiVersion: cilium.io/v2\nkind: \u001b[31mRed\u001b[0m\n",
    "i-scenario.yaml": "name: x\npolicies: [1, {a: b}]\nendpoints: 5\nqueries: [{}]\n",
    "j-utf16.yaml": new Uint8Array([0xff, 0xfe, 0x6b, 0x00, 0x3a, 0x00]),
  };
  for (const [name, content] of Object.entries(files)) {
    if (typeof content === "string") await Deno.writeTextFile(`${dir}/${name}`, content);
    else await Deno.writeFile(`${dir}/${name}`, content);
  }
  await Deno.mkdir(`${dir}/k-dir.yaml`);
  await Deno.symlink(`${dir}/nowhere.yaml`, `${dir}/l-dangling.yaml`);
  return { dir, binary };
}

Deno.test("bin/cilia: malformed invocations exit 1 or 2 with a message, never a stack trace", async () => {
  const { dir, binary } = await garbageDir();
  const sock = `unix://${dir}/missing.sock`;
  const cases: [string, string[], 1 | 2 | "1|2"][] = [
    ["unknown flag", ["--bogus"], 2],
    ["unknown flag after a command", ["policy", "validate", "--frobnicate", binary], 2],
    ["missing flag value", ["policy", "validate", "--policy"], 2],
    ["missing -o value", ["-o"], 2],
    ["bad output format", ["-o", "xml", "endpoint", "list", "-H", sock], 2],
    ["unknown command", ["frob", "nicate"], 2],
    ["validate without files", ["policy", "validate"], 2],
    ["binary file as a policy", ["policy", "validate", binary], 1],
    ["directory of garbage: validate", ["policy", "validate", dir], 1],
    ["directory of garbage: validate -o json", ["policy", "validate", "-o", "json", dir], 1],
    ["directory of garbage: lint", ["policy", "lint", dir], 1],
    ["directory of garbage: test", ["policy", "test", dir], 1],
    ["binary file as a scenario", ["policy", "test", binary], 1],
    [
      "trace with a garbage policy",
      [
        "policy",
        "trace",
        "--policy",
        binary,
        "--src-labels",
        "a=b",
        "--dst-labels",
        "c=d",
        "--dport",
        "80/TCP",
      ],
      1,
    ],
    [
      "trace with a bad port",
      [
        "policy",
        "trace",
        "--policy",
        `${dir}/f-empty.yml`,
        "--src-labels",
        "a=b",
        "--dst-labels",
        "c=d",
        "--dport",
        "99999/TCP",
      ],
      "1|2",
    ],
    ["missing file", ["policy", "validate", `${dir}/nope.yaml`], 1],
    ["dangling symlink", ["policy", "validate", `${dir}/l-dangling.yaml`], 1],
    ["endpoint get with no agent", ["endpoint", "get", "../..", "-H", sock], 1],
    ["import a binary file with no agent", ["policy", "import", binary, "-H", sock], 1],
    ["bad host URL", ["status", "-H", "ftp://x"], "1|2"],
    ["bad timeout", ["status", "--wait", "--timeout", "soon", "-H", sock], "1|2"],
  ];
  const found = new Findings();
  try {
    for (let i = 0; i < cases.length; i += 6) {
      await Promise.all(
        cases.slice(i, i + 6).map(async ([name, args, want]) => {
          const { code, stdout, stderr } = await cilia(args);
          const what = `${name} (cilia ${args.join(" ").replaceAll(dir, "$DIR")}): exit ${code}`;
          const ok = want === "1|2" ? code === 1 || code === 2 : code === want;
          if (!ok) found.add(`${what}, expected ${want}; stderr: ${stderr.slice(0, 300)}`);
          if (args.includes("json")) {
            // Machine output: the report is the JSON on stdout.
            try {
              JSON.parse(stdout);
            } catch {
              found.add(`${what} with stdout that is not JSON: ${stdout.slice(0, 300)}`);
            }
          } else if (stderr.trim() === "") found.add(`${what} with nothing on stderr`);
          if (STACK.test(stderr)) found.add(`${what} with a stack trace: ${stderr.slice(0, 600)}`);
          if (CONTROL.test(stderr)) {
            found.add(
              `${what} prints raw control characters: ${
                JSON.stringify(stderr.match(new RegExp(`.{0,40}${CONTROL.source}.{0,40}`))?.[0])
              }`,
            );
          }
          const lines = stderr.trimEnd().split("\n");
          if (code === 2 && lines.length !== 1) {
            found.add(`${what} with ${lines.length} lines: ${stderr.slice(0, 300)}`);
          }
          if (lines.some((l) => l.length > 2_000)) {
            found.add(
              `${what} with a line of ${Math.max(...lines.map((l) => l.length))} characters`,
            );
          }
        }),
      );
    }
    const debug = await cilia(["policy", "validate", `${dir}/nope.yaml`], { CILIA_DEBUG: "1" });
    if (debug.code !== 1 || !debug.stderr.includes("Cannot read")) {
      found.add(
        `CILIA_DEBUG=1 changed the outcome: exit ${debug.code}: ${debug.stderr.slice(0, 300)}`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  found.assertNone("bin/cilia", 0);
});
