// The live `cilia` commands against a real agent process on a temp socket (-H unix://… and
// CILIA_HOST): status, endpoint, identity, node, ipam, policy import/get/delete/trace, every
// listing in table, JSON and YAML; and the error when no agent is running.

import assert from "node:assert/strict";
import { parse as parseYaml } from "yaml";
import {
  type AgentProcess,
  endpointBody,
  POLICY_HTTP,
  root,
  spawnAgent,
} from "../agent/_fixture.ts";

interface Run {
  code: number;
  out: string;
  err: string;
}

async function cilia(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const o = await new Deno.Command(`${root}bin/cilia`, {
    args,
    cwd: root,
    stdin: "null",
    env: { CILIA_DENO: Deno.execPath(), NO_COLOR: "1", ...env },
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
}

function ok(r: Run): string {
  assert.equal(r.code, 0, `exit ${r.code}: ${r.err}`);
  return r.out;
}

Deno.test("live CLI against a running agent: every command and output format", async (t) => {
  const agent: AgentProcess = await spawnAgent({
    node: "node-cli",
    args: ["--pod-cidr", "10.220.0.0/24"],
  });
  const H = ["-H", `unix://${agent.socket}`];
  const dir = await Deno.makeTempDir({ prefix: "cilia-cli-" });
  try {
    for (
      const [id, app, ip] of [[1, "frontend", "10.220.0.5"], [2, "backend", "10.220.0.6"]] as const
    ) {
      const r = await agent.api.call(
        "PUT",
        `/v1/endpoint/${id}`,
        endpointBody(app, { app }, { ipv4: ip }),
      );
      assert.equal(r.status, 201);
    }

    await t.step("status: table, json, --brief, --wait", async () => {
      const [table, json, brief, wait] = await Promise.all([
        cilia(["status", ...H]),
        cilia(["status", "-o", "json", ...H]),
        cilia(["status", "--brief", ...H]),
        cilia(["status", "--wait", "--timeout", "5s"], { CILIA_HOST: `unix://${agent.socket}` }),
      ]);
      assert.match(ok(table), /^Node:\s+node-cli \(10\.220\.0\.0\/24\)$/m);
      assert.match(table.out, /^Endpoints:\s+2 \(0 not ready\)$/m);
      assert.match(table.out, /^Datapath:\s+none \(no enforcement\)$/m);
      assert.equal(JSON.parse(ok(json)).endpoints.count, 2);
      assert.equal(ok(brief), "OK\n");
      assert.match(ok(wait), /^Health:\s+OK$/m);
    });

    await t.step("endpoint and identity listings", async () => {
      const [table, json, yaml, get, ids] = await Promise.all([
        cilia(["endpoint", "list", ...H]),
        cilia(["endpoint", "list", "-o", "json", ...H]),
        cilia(["endpoint", "list", "-o", "yaml", ...H]),
        cilia(["endpoint", "get", "backend", "-o", "json", ...H]),
        cilia(["identity", "list", "-o", "json", ...H]),
      ]);
      assert.match(ok(table), /^ID\s+NAMESPACE\s+NAME\s+IDENTITY\s+IPV4/);
      assert.match(table.out, /^1\s+default\s+frontend\s+\d+\s+10\.220\.0\.5/m);
      assert.deepEqual(JSON.parse(ok(json)).map((e: { name: string }) => e.name), [
        "frontend",
        "backend",
      ]);
      assert.deepEqual((parseYaml(ok(yaml)) as { id: number }[]).map((e) => e.id), [1, 2]);
      const backend = JSON.parse(ok(get));
      assert.equal(backend.ipv4, "10.220.0.6");
      const list = JSON.parse(ok(ids)) as { id: number; scope: string }[];
      assert.ok(list.some((i) => i.id === backend.identity && i.scope === "global"));
      const one = await cilia(["identity", "get", String(backend.identity), ...H]);
      assert.match(
        ok(one),
        new RegExp(`^${backend.identity}\\s+global\\s+1\\s+k8s:app=backend`, "m"),
      );
      const missing = await cilia(["endpoint", "get", "nope", ...H]);
      assert.equal(missing.code, 1);
      assert.match(missing.err, /Endpoint "nope" does not exist on this node/);
    });

    await t.step("policy import, get (re-importable YAML and JSON), trace, delete", async () => {
      const file = `${dir}/http.yaml`;
      await Deno.writeTextFile(file, POLICY_HTTP);
      assert.equal(
        ok(await cilia(["policy", "import", file, ...H])),
        "Imported 1 policy, revision 2\n",
      );
      const table = ok(await cilia(["policy", "get", ...H]));
      assert.match(table, /^CiliumNetworkPolicy\s+default\s+backend-get-public/m);
      const yaml = ok(await cilia(["policy", "get", "-o", "yaml", ...H]));
      const json = ok(await cilia(["policy", "get", "-o", "json", ...H]));
      assert.equal(JSON.parse(json).kind, "List");

      const allowed = await cilia([
        "policy",
        "trace",
        "--src-endpoint",
        "frontend",
        "--dst-endpoint",
        "default/backend",
        "--dport",
        "80/TCP",
        "--http-method",
        "GET",
        "--http-path",
        "/public/x",
        ...H,
      ]); // deno-fmt-ignore
      assert.match(ok(allowed), /^Final verdict: ALLOWED$/m);
      const denied = await cilia([
        "policy",
        "trace",
        "--src-endpoint",
        "1",
        "--dst-endpoint",
        "2",
        "--dport",
        "80/TCP",
        "--http-method",
        "GET",
        "--http-path",
        "/private",
        "-o",
        "json",
        ...H,
      ]); // deno-fmt-ignore
      assert.equal(JSON.parse(ok(denied)).verdict, "denied");

      const del = await cilia(["policy", "delete", "backend-get-public", "-n", "default", ...H]);
      assert.match(ok(del), /^Deleted CiliumNetworkPolicy default\/backend-get-public$/m);
      const gone = await cilia(["policy", "delete", "backend-get-public", ...H]);
      assert.equal(gone.code, 1);
      assert.match(gone.err, /No policy matches name "backend-get-public"/);

      for (const [name, text] of [["yaml", yaml], ["json", json]] as [string, string][]) {
        const f = `${dir}/again.${name}`;
        await Deno.writeTextFile(f, text);
        assert.match(ok(await cilia(["policy", "import", f, ...H])), /^Imported 1 policy/, name);
        const back = ok(await cilia(["policy", "get", "-o", name, ...H]));
        assert.equal(back, text, `${name} round trip`);
        ok(await cilia(["policy", "delete", "--all", ...H]));
      }

      const bad = `${dir}/bad.yaml`;
      await Deno.writeTextFile(bad, POLICY_HTTP.replace("toPorts:", "toPort:"));
      const r = await cilia(["policy", "import", bad, ...H]);
      assert.equal(r.code, 1);
      assert.match(r.err, new RegExp(`^${bad}:\\d+:\\d+: error: Unknown field "toPort"`, "m"));
    });

    await t.step("ipam allocate, list, release; node list", async () => {
      const a = ok(await cilia(["ipam", "allocate", "--owner", "c9", ...H]));
      assert.match(a, /^10\.220\.0\.2 \(10\.220\.0\.0\/24, gateway 10\.220\.0\.1\)$/m);
      assert.match(
        ok(await cilia(["ipam", ...H])),
        /^10\.220\.0\.2\s+IPv4\s+10\.220\.0\.0\/24\s+c9$/m,
      );
      const json = JSON.parse(ok(await cilia(["ipam", "list", "-o", "json", ...H])));
      assert.equal(json.allocations.length, 3);
      assert.match(
        ok(await cilia(["ipam", "release", "10.220.0.2", ...H])),
        /Released 10\.220\.0\.2/,
      );
      const nodes = ok(await cilia(["node", "list", ...H]));
      assert.match(nodes, /^node-cli\s+.*10\.220\.0\.0\/24\s+\*$/m);
    });
  } finally {
    await agent.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("live CLI without an agent: the error names the socket and how to start the agent", async () => {
  const socket = "/tmp/cilia-no-agent-here.sock";
  const want = `Cannot reach the cilia agent at unix://${socket}: no such socket. Start it with ` +
    `"bin/cilia-agent" (or "deno task agent"), or point -H/--host at its socket`;
  const [flag, env, brief, wait] = await Promise.all([
    cilia(["endpoint", "list", "-H", `unix://${socket}`]),
    cilia(["status"], { CILIA_HOST: `unix://${socket}` }),
    cilia(["status", "--brief", "-H", `unix://${socket}`]),
    cilia(["status", "--wait", "--timeout", "300ms", "-H", `unix://${socket}`]),
  ]);
  assert.deepEqual([flag.code, flag.err.trim()], [1, `cilia: error: ${want}`]);
  assert.deepEqual([env.code, env.err.trim()], [1, `cilia: error: ${want}`]);
  const before = await cilia(["-H", `unix://${socket}`, "observe", "--last", "1"]);
  assert.deepEqual([before.code, before.err.trim()], [1, `cilia: error: ${want}`], "-H first");
  assert.deepEqual([brief.code, brief.out.trim()], [1, want]);
  assert.equal(wait.code, 1);
  assert.match(wait.err, /did not become healthy within 0\.3 s: Cannot reach the cilia agent/);
  const bad = await cilia(["status", "-H", "tcp://1.2.3.4:5"]);
  assert.deepEqual([bad.code, bad.err.trim()], [
    2,
    'cilia: error: Unsupported host "tcp://1.2.3.4:5": expected unix:///path/to/cilia.sock',
  ]);
});
