// Fuzzing the CNI plugin in process (`runPlugin`, agent/cni/plugin.ts) with no agent listening:
// random CNI_* environments (missing, invalid, hostile values) and random network configurations
// (mutated valid ones, non-JSON, huge, wrong types) on stdin. Every agentSocket lives in a temp
// dir (a missing socket, a regular file, a directory, an unwritable place), so a DEL that queues
// itself writes nowhere else. Properties: runPlugin never throws; the exit code is 0 or 1; on 1
// stdout is the spec's error object with a numeric code and a message; without an agent only
// VERSION and a queued DEL succeed, and a DEL that reports success is really in the queue.

import { runPlugin } from "../../agent/cni/plugin.ts";
import { deleteQueueDir } from "../../agent/cni/delete_queue.ts";
import { Findings, fuzzSeed, iterations, Rand } from "./_rand.ts";
import { type Json, mutateValue, STRANGE_STRINGS, strangeValue } from "./_mutate_values.ts";

const COMMANDS = ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS", "", "add", "BOGUS", "DEL "];
const IDS = ["c1", "abc-DEF_1.2", "", "-x", "a/b", "..", "x".repeat(300), "日本", "c\u0000", "c;d"];
const IFNAMES = ["eth0", "", "a/b", "x".repeat(16), ".", "..", "e th", "net1", "eth0:1", "😀"];
const NETNS = ["/run/netns/x", "", "relative", "/", "/proc/1/ns/net", "/x/../../etc", "\u0000"];
const ARGS = [
  undefined,
  "",
  "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default",
  "K8S_POD_NAME=web",
  "X=y",
  "novalue",
  "=v",
  ";;;",
  "IgnoreUnknown=true;X=y;CILIA_LABELS=app=web,tier=1",
  "CILIA_LABELS=novalue",
  "CILIA_LABELS=__proto__=x,constructor=y",
  "K8S_POD_NAME=" + "a".repeat(5000),
];

function pickOrStrange(r: Rand, list: readonly (string | undefined)[]): string | undefined {
  return r.chance(0.85) ? r.pick(list) : r.pick(STRANGE_STRINGS);
}

Deno.test("runPlugin() without an agent: exit 0 or 1, the CNI error object, never a throw", async () => {
  const seed = fuzzSeed(0xc41);
  const r = new Rand(seed);
  const found = new Findings();
  const dir = await Deno.makeTempDir({ prefix: "cilia-cni-fuzz-" });
  const notASocket = `${dir}/file.sock`;
  await Deno.writeTextFile(notASocket, "not a socket");
  await Deno.mkdir(`${dir}/dir.sock`);
  const sockets = [
    `${dir}/missing/cilia.sock`,
    `${dir}/cilia.sock`,
    notASocket,
    `${dir}/dir.sock`,
    `${notASocket}/below-a-file.sock`, // the DEL queue cannot be created here
    `${dir}/${"s".repeat(120)}.sock`, // longer than a unix socket path may be
  ];
  const valid = [
    { cniVersion: "1.0.0", name: "net", type: "cilia-cni" },
    {
      cniVersion: "0.4.0",
      name: "net",
      type: "cilia-cni",
      args: { cni: { labels: [{ key: "app", value: "x" }] } },
    },
    {
      cniVersion: "1.1.0",
      name: "net",
      type: "cilia-cni",
      "cni.dev/valid-attachments": [{ containerID: "c1", ifname: "eth0" }],
      prevResult: { ips: [{ address: "10.0.0.2/24" }] },
    },
  ];
  const outcomes = new Map<string, number>();
  try {
    for (let i = 0; i < iterations(1_200); i++) {
      const command = r.chance(0.9) ? r.pick(COMMANDS) : r.pick(STRANGE_STRINGS);
      const env: Record<string, string | undefined> = {
        CNI_COMMAND: r.chance(0.97) ? command : undefined,
        CNI_CONTAINERID: pickOrStrange(r, IDS),
        CNI_NETNS: pickOrStrange(r, NETNS),
        CNI_IFNAME: pickOrStrange(r, IFNAMES),
        CNI_ARGS: pickOrStrange(r, ARGS),
        CNI_PATH: "/opt/cni/bin",
      };
      const socket = r.pick(sockets);
      let conf: Json = structuredClone(r.pick(valid));
      conf.agentSocket = socket;
      const how: string[] = [];
      for (let n = r.int(3); n > 0; n--) {
        const [v, d] = mutateValue(r, conf);
        conf = v;
        how.push(d);
      }
      // Never let a mutation point the plugin at the real agent's socket (or a relative one):
      // a DEL would queue itself there.
      if (conf && typeof conf === "object" && !Array.isArray(conf)) {
        const s = conf.agentSocket;
        if (s === undefined || (typeof s === "string" && !s.startsWith(dir))) {
          conf.agentSocket = socket;
        }
      }
      const k = r.int(12);
      const stdin = k === 0
        ? ""
        : k === 1
        ? "{"
        : k === 2
        ? JSON.stringify(strangeValue(r))
        : k === 3
        ? String.fromCharCode(...Array.from({ length: 64 }, () => r.int(256)))
        : JSON.stringify(conf) ?? "";
      const what = `#${i} env ${JSON.stringify(env).slice(0, 300)} stdin ${stdin.slice(0, 300)} (${
        how.join("; ")
      })`;
      let out;
      try {
        out = await runPlugin(env, stdin);
      } catch (err) {
        found.add(`${what}: runPlugin() threw ${(err as Error)?.stack ?? err}`);
        continue;
      }
      outcomes.set(
        `${env.CNI_COMMAND}:${out.code}`,
        (outcomes.get(`${env.CNI_COMMAND}:${out.code}`) ?? 0) + 1,
      );
      if (out.code !== 0 && out.code !== 1) {
        found.add(`${what}: exit code ${out.code}`);
        continue;
      }
      if (out.code === 1) {
        let e: Json;
        try {
          e = JSON.parse(out.stdout);
        } catch {
          found.add(`${what}: exit 1 with stdout that is not JSON: ${out.stdout.slice(0, 200)}`);
          continue;
        }
        if (
          !Number.isInteger(e?.code) || typeof e?.msg !== "string" || e.msg === "" ||
          typeof e?.cniVersion !== "string" ||
          (e.details !== undefined && typeof e.details !== "string")
        ) {
          found.add(`${what}: exit 1 without the CNI error object: ${out.stdout.slice(0, 200)}`);
        }
        if (/\bundefined\b|\[object Object\]|^cilia-cni failed:/.test(e?.msg ?? "")) {
          found.add(`${what}: an unclear error message: ${e.msg}`);
        }
        continue;
      }
      if (env.CNI_COMMAND === "VERSION") {
        try {
          if (!Array.isArray(JSON.parse(out.stdout).supportedVersions)) throw new Error();
        } catch {
          found.add(`${what}: VERSION printed ${out.stdout.slice(0, 200)}`);
        }
      } else if (env.CNI_COMMAND === "DEL") {
        const queue = deleteQueueDir(typeof conf.agentSocket === "string" ? conf.agentSocket : "");
        const queued = await Array.fromAsync(Deno.readDir(queue)).catch(() => []);
        if (
          !queued.some((f) =>
            f.name.startsWith(`${env.CNI_CONTAINERID}-`.replace(/[^A-Za-z0-9_.-]/g, "_"))
          )
        ) {
          found.add(`${what}: DEL succeeded without an agent but nothing is queued in ${queue}`);
        }
      } else {
        found.add(
          `${what}: ${env.CNI_COMMAND} succeeded without an agent: ${out.stdout.slice(0, 200)}`,
        );
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  found.assertNone("CNI plugin", seed);
  for (const want of ["DEL:0", "DEL:1", "ADD:1", "VERSION:0", "GC:1", "STATUS:1", "CHECK:1"]) {
    if (!outcomes.has(want)) {
      throw new Error(`No "${want}" outcome: ${JSON.stringify([...outcomes])}`);
    }
  }
});

Deno.test("runPlugin() DEL with a relative agentSocket queues next to it, not beside a truncated name", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-cni-fuzz-" });
  const cwd = Deno.cwd();
  Deno.chdir(dir);
  try {
    const out = await runPlugin(
      { CNI_COMMAND: "DEL", CNI_CONTAINERID: "c1", CNI_IFNAME: "eth0" },
      JSON.stringify({
        cniVersion: "1.0.0",
        name: "n",
        type: "cilia-cni",
        agentSocket: "cilia.sock",
      }),
    );
    const made = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    if (out.code === 0 && !made.includes("cni-delete-queue")) {
      throw new Error(
        `DEL with agentSocket "cilia.sock" reported success and created ${JSON.stringify(made)}`,
      );
    }
  } finally {
    Deno.chdir(cwd);
    await Deno.remove(dir, { recursive: true });
  }
});
