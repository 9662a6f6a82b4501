// The underlay device and the tunnel protocol at agent start (issue #12), one agent per node
// netns, each node with two devices: ula (192.0.2.1, MTU 1400) and ulb (198.51.100.1, MTU 9000).
// `--node-ip` alone finds the device that holds it (the underlay programs attach there, the
// tunnel device and pods get its MTU − 50); `--devices ulb` overrides that device; `--devices`
// alone gives the node IP too (that device's address, not the node's first); a missing device is
// an error naming it; `--tunnel-protocol geneve` stops the agent with an error naming Geneve and,
// on a kernel without it, the missing module. Needs root.
import assert from "node:assert/strict";
import { Lab, type Node } from "../helpers/netns.ts";
import { spawnAgentArgv } from "../helpers/cluster.ts";
import { KERNEL_TOOLS, needs } from "../helpers/root.ts";
import { execCni, root } from "../cni/_fixture.ts";
import { SocketClient } from "../agent/_fixture.ts";

const dec = new TextDecoder();

/** Two underlay devices of different MTUs in the node (veths: this kernel has no dummy). */
async function devices(lab: Lab, node: Node): Promise<void> {
  await lab.run(node.netns, [
    "sh",
    "-c",
    "ip link add ula mtu 1400 type veth peer name ulap mtu 1400 && " +
    "ip link set ulap up && ip link set ula up && ip addr add 192.0.2.1/24 dev ula && " +
    "ip link add ulb mtu 9000 type veth peer name ulbp mtu 9000 && " +
    "ip link set ulbp up && ip link set ulb up && ip addr add 198.51.100.1/24 dev ulb",
  ]);
}

interface Agent {
  api: SocketClient;
  socket: string;
  child: Deno.ChildProcess;
  /** Resolves to the exit code and everything the agent wrote to stderr. */
  exited: Promise<{ code: number; log: string }>;
}

function spawnAgent(lab: Lab, node: Node, args: string[]): Agent {
  const dir = `${lab.dir}/${node.name}`;
  const socket = `${dir}/cilia.sock`;
  const argv = lab.nodeArgv(node, [
    `${root}bin/cilia-agent`,
    ...["--state-dir", `${dir}/state`, "--socket", socket, "--node-name", node.name],
    ...["--pod-cidr", `10.200.${node.index}.0/24`, "--log-level", "warn"],
    ...args,
  ]);
  const child = spawnAgentArgv(argv);
  const exited = (async () => {
    let log = "";
    for await (const chunk of child.stderr) log += dec.decode(chunk);
    return { code: (await child.status).code, log };
  })();
  return { api: new SocketClient(socket), socket, child, exited };
}

/** Waits until the agent answers /v1/healthz; throws with its log if it exits first. */
async function ready(agent: Agent): Promise<void> {
  let gone: { code: number; log: string } | undefined;
  agent.exited.then((e) => gone = e);
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (gone) throw new Error(`The agent exited with ${gone.code}:\n${gone.log}`);
    try {
      if ((await agent.api.call("GET", "/v1/healthz")).status === 200) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("The agent did not start within 60 s");
}

async function stop(agent: Agent): Promise<void> {
  try {
    agent.child.kill("SIGTERM");
  } catch { /* gone */ }
  await agent.exited;
  agent.api.close();
}

/** Names of the devices of the node with a tc ingress program of cilia's underlay object. */
async function attached(lab: Lab, node: Node): Promise<string[]> {
  const out: string[] = [];
  for (const dev of ["ula", "ulb"]) {
    const tc = await lab.run(node.netns, ["tc", "filter", "show", "dev", dev, "ingress"]);
    if (tc.includes("cil_from_netdev")) out.push(dev);
  }
  return out;
}

const mtu = async (lab: Lab, netns: string, dev: string) =>
  (JSON.parse(await lab.run(netns, ["ip", "-j", "link", "show", dev])) as { mtu: number }[])[0]!
    .mtu;

/** The node's own record as GET /v1/node lists it. */
async function self(agent: Agent): Promise<{ ip?: string }> {
  const nodes = (await agent.api.call("GET", "/v1/node")).body as { health: string }[];
  return nodes.find((n) => n.health === "self") as { ip?: string };
}

Deno.test({
  name: "underlay: --node-ip finds the device, --devices overrides it, geneve is refused",
  ...needs({ root: true, binaries: KERNEL_TOOLS }),
  sanitizeResources: false,
}, async (t) => {
  await using lab = await Lab.create();

  for (
    const c of [
      { args: ["--node-ip", "192.0.2.1"], dev: "ula", ip: "192.0.2.1", mtu: 1400 },
      {
        args: ["--node-ip", "192.0.2.1", "--devices", "ulb"],
        dev: "ulb",
        ip: "192.0.2.1",
        mtu: 9000,
      },
      { args: ["--devices", "ulb"], dev: "ulb", ip: "198.51.100.1", mtu: 9000 },
    ]
  ) {
    await t.step(`${c.args.join(" ")}: programs on ${c.dev}, MTU ${c.mtu}`, async () => {
      const node = await lab.addNode(`n${c.args.length}${c.dev}`);
      await devices(lab, node);
      const agent = spawnAgent(lab, node, c.args);
      try {
        await ready(agent);
        assert.deepEqual(await attached(lab, node), [c.dev], "the underlay programs' device");
        assert.equal((await self(agent)).ip, c.ip, "the node IP");
        assert.equal(await mtu(lab, node.netns, "cilia_vxlan"), c.mtu - 50, "the tunnel's MTU");
        // A pod gets the tunnel's MTU, so it follows the chosen device too.
        const pod = `${lab.prefix}p${node.index}`;
        await new Deno.Command("ip", { args: ["netns", "add", pod] }).output();
        const r = await execCni("ADD", {
          containerId: `p${node.index}`,
          netns: `/run/netns/${pod}`,
          args: `IgnoreUnknown=1;K8S_POD_NAME=p${node.index};CILIA_LABELS=app=p`,
        }, agent.socket);
        assert.equal(r.code, 0, `CNI ADD: ${r.stdout}${r.stderr}`);
        assert.equal(await mtu(lab, pod, "eth0"), c.mtu - 50, "the pod's eth0");
      } finally {
        await stop(agent);
      }
    });
  }

  for (
    const c of [
      {
        name: "--devices naming no device: an error naming it",
        args: ["--node-ip", "192.0.2.1", "--devices", "nope0"],
        want: /Cannot find the underlay device: no interface is named "nope0" \(--devices\)/,
      },
      {
        name: "--tunnel-protocol geneve: an error naming Geneve and why",
        args: ["--node-ip", "192.0.2.1", "--tunnel-protocol", "geneve"],
        want: undefined,
      },
    ]
  ) {
    await t.step(c.name, async () => {
      const node = await lab.addNode(`x${c.args.at(-1)}`);
      await devices(lab, node);
      let want = c.want;
      if (want === undefined) {
        // Whether this kernel has Geneve decides which reason the agent gives.
        const probe = await lab.exec(node.netns, [
          ...["ip", "link", "add", "gnv0", "type", "geneve", "external"],
        ]);
        want = probe.code === 0
          ? /Cannot use tunnel protocol "geneve": cilia's overlay implements VXLAN only/
          : /Cannot use tunnel protocol "geneve": this kernel has no Geneve support \(the kernel module "geneve" is missing/;
      }
      const agent = spawnAgent(lab, node, c.args);
      const timer = setTimeout(() => agent.child.kill("SIGKILL"), 60_000);
      try {
        const { code, log } = await agent.exited;
        assert.notEqual(code, 0, "the agent stops at start");
        const line = log.split("\n").filter(Boolean).map((l) =>
          JSON.parse(l) as { msg: string; error?: { message: string } }
        ).find((l) => l.msg === "cannot start the agent");
        assert.match(line?.error?.message ?? "", want, log);
      } finally {
        clearTimeout(timer);
        agent.api.close();
      }
    });
  }
});
