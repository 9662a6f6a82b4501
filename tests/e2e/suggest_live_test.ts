// Least privilege from real traffic: a lab with no policy carries frontend → backend:8080 and
// backend → db:5432; `cilia policy suggest --from-agent` turns the agent's flows into policies
// that validate, lint clean and pass their own scenario; imported into the lab they still let the
// observed connections through with real packets and deny probes outside them; and `policy
// replay --from-agent` against a draft without the backend → db rule lists exactly that
// connection as newly denied and exits 1. One lab for the whole file. Needs root.
import assert from "node:assert/strict";
import { parseAllDocuments, stringify } from "yaml";
import { CiliaNode, root } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { eventually } from "../helpers/cluster.ts";

const dec = new TextDecoder();

async function cli(n: CiliaNode, args: string[]) {
  const out = await new Deno.Command(`${root}bin/cilia`, {
    args,
    env: { CILIA_DENO: Deno.execPath(), CILIA_HOST: `unix://${n.socket}`, NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test({
  name: "policy suggest/replay: least privilege from a lab's real flows",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  await using n = await CiliaNode.create();
  const dir = n.lab.dir; // removed with the lab
  const frontend = await n.addPod("frontend", { app: "frontend" });
  const backend = await n.addPod("backend", { app: "backend" });
  const db = await n.addPod("db", { app: "db" });
  const other = await n.addPod("other", { app: "other" });
  for (const port of [8080, 9090]) await n.peer(backend.netns).listen("tcp", port);
  await n.peer(db.netns).listen("tcp", 5432);
  const probe = (from: string, ip: string, port: number, ms = 3000) =>
    n.peer(from).probe("tcp", ip, port, ms);

  // The observed traffic, with no policy loaded.
  assert.equal(await probe(frontend.netns, backend.ipv4, 8080), true);
  assert.equal(await probe(backend.netns, db.ipv4, 5432), true);
  // Both connections are in the agent's flows before suggest reads them (the monitor may lag).
  for (const [pod, port] of [["backend", "8080"], ["db", "5432"]] as const) {
    await eventually(
      `a flow toward ${pod}:${port}`,
      async () =>
        (await n.flows({ port })).flows.some((f) => !f.is_reply && f.destination?.pod_name === pod),
    );
  }

  const policyFile = `${dir}/suggested.yaml`;
  const scenarioFile = `${dir}/scenario.yaml`;
  let suggested = "";

  await t.step("suggest: policies that validate, lint clean and pass their scenario", async () => {
    const s = await cli(n, [
      "policy",
      "suggest",
      "--from-agent",
      "-o",
      "yaml",
      "--scenario-out",
      scenarioFile,
    ]);
    assert.equal(s.code, 0, s.stderr);
    suggested = s.stdout;
    await Deno.writeTextFile(policyFile, suggested);
    for (const cmd of ["validate", "lint"]) {
      const r = await cli(n, ["policy", cmd, policyFile]);
      assert.equal(r.code, 0, `policy ${cmd}: ${r.stdout}${r.stderr}\n${suggested}`);
    }
    const r = await cli(n, ["policy", "test", scenarioFile]);
    assert.equal(r.code, 0, `policy test: ${r.stdout}${r.stderr}`);
  });

  await t.step(
    "imported, the observed connections pass and probes outside them do not",
    async () => {
      await n.policy(suggested);
      assert.equal(
        await probe(frontend.netns, backend.ipv4, 8080),
        true,
        "frontend → backend:8080",
      );
      assert.equal(await probe(backend.netns, db.ipv4, 5432), true, "backend → db:5432");
      assert.equal(
        await probe(other.netns, backend.ipv4, 8080, 400),
        false,
        "other → backend:8080",
      );
      assert.equal(await probe(frontend.netns, db.ipv4, 5432, 400), false, "frontend → db:5432");
      assert.equal(
        await probe(frontend.netns, backend.ipv4, 9090, 400),
        false,
        "frontend → backend:9090",
      );
    },
  );

  await t.step(
    "replay: a draft without backend → db lists exactly that as newly denied",
    async () => {
      // Removing the last rule of a direction must keep it default-deny: in Cilium an empty
      // `egress: []` enforces nothing (only enableDefaultDeny or a rule does).
      const without = (
        // deno-lint-ignore no-explicit-any
        doc: any,
        dir: "ingress" | "egress",
        peer: string,
      ) => {
        const field = dir === "ingress" ? "fromEndpoints" : "toEndpoints";
        // deno-lint-ignore no-explicit-any
        const rules = (doc.spec[dir] ?? []).filter((r: any) =>
          // deno-lint-ignore no-explicit-any
          !(r[field] ?? []).some((p: any) => p.matchLabels?.app === peer)
        );
        if (rules.length > 0) doc.spec[dir] = rules;
        else {
          delete doc.spec[dir];
          doc.spec.enableDefaultDeny = { ...doc.spec.enableDefaultDeny, [dir]: true };
        }
      };
      const tightened = parseAllDocuments(suggested).map((d) => {
        const doc = d.toJS();
        const app = doc.spec.endpointSelector.matchLabels.app;
        if (app === "backend") without(doc, "egress", "db");
        if (app === "db") without(doc, "ingress", "backend");
        return stringify(doc);
      });
      const draft = `${dir}/tightened.yaml`;
      await Deno.writeTextFile(draft, tightened.join("---\n"));
      const r = await cli(n, ["policy", "replay", "--policy", draft, "--from-agent", "-o", "json"]);
      assert.equal(r.code, 1, `${r.stdout}${r.stderr}`);
      const report = JSON.parse(r.stdout) as {
        changes: { change: string; from: string; to: string; protocol: string; port: number }[];
      };
      assert.deepEqual(
        report.changes.map((c) => `${c.change} ${c.from} -> ${c.to} ${c.protocol}/${c.port}`),
        ["newly-denied default/backend -> default/db TCP/5432"],
      );
    },
  );
});
