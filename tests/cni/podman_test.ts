// podman 4.3 as the CNI runtime (MACHINE.md §4): CNI backend with `cilia-cni` in its plugin
// directory, runc, a busybox rootfs, all configuration and storage in a temp dir. Containers get
// their labels through CNI_ARGS (podman passes its own CNI_ARGS on, after K8S_POD_NAME); the agent
// runs with the kernel datapath in a lab node. Shows `podman inspect` with the agent's address,
// policy between containers (allowed and denied), and DEL on stop. Leftovers podman makes outside
// the temp dir (/var/lib/cni/results entries, empty libpod_parent cgroups) are removed. Root only.
import assert from "node:assert/strict";
import { eventually } from "../agent/_fixture.ts";
import { CiliaNode, NETWORK, root } from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`;

const dec = new TextDecoder();

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/** A busybox rootfs with relative applet links and a page for httpd. */
async function makeRootfs(dir: string): Promise<void> {
  await Deno.mkdir(`${dir}/bin`, { recursive: true });
  for (const d of ["www", "tmp", "proc", "sys", "dev", "etc"]) await Deno.mkdir(`${dir}/${d}`);
  await Deno.copyFile("/usr/bin/busybox", `${dir}/bin/busybox`);
  await Deno.chmod(`${dir}/bin/busybox`, 0o755);
  const list = await new Deno.Command("/usr/bin/busybox", { args: ["--list"] }).output();
  for (const applet of dec.decode(list.stdout).split("\n").filter((a) => a && a !== "busybox")) {
    await Deno.symlink("busybox", `${dir}/bin/${applet}`);
  }
  await Deno.writeTextFile(`${dir}/www/index.html`, "hello from web\n");
}

/** Empty libpod_parent cgroup directories, deepest first. */
async function libpodCgroups(): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    for await (const e of Deno.readDir(dir)) {
      if (!e.isDirectory) continue;
      const p = `${dir}/${e.name}`;
      if (e.name === "libpod_parent" || p.includes("/libpod_parent/")) {
        await walk(p, depth + 1);
        out.push(p);
      } else if (depth < 1) await walk(p, depth + 1);
    }
  };
  await walk("/sys/fs/cgroup", 0).catch(() => {});
  return out.sort((a, b) => b.length - a.length);
}

Deno.test({
  name: "podman 4.3 with the CNI backend runs containers on cilia-cni; policy between them",
  ...needsRoot(["podman", "runc"]),
  sanitizeResources: false,
}, async (t) => {
  const hadCniDir = await exists("/var/lib/cni");
  const hadResults = await exists("/var/lib/cni/results");
  await using n = await CiliaNode.create();
  const x = `${n.lab.dir}/podman`;
  for (const d of ["cni-bin", "cni-conf", "tmp", "storage"]) {
    await Deno.mkdir(`${x}/${d}`, { recursive: true });
  }
  await Deno.symlink(`${root}bin/cilia-cni`, `${x}/cni-bin/cilia-cni`);
  await Deno.writeTextFile(
    `${x}/cni-conf/${NETWORK}.conflist`,
    JSON.stringify({
      cniVersion: "1.0.0",
      name: NETWORK,
      plugins: [{ type: "cilia-cni", agentSocket: n.socket }],
    }),
  );
  await Deno.writeTextFile(
    `${x}/containers.conf`,
    `[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nruntime = "runc"\n` +
      `tmp_dir = "${x}/tmp"\n[network]\nnetwork_backend = "cni"\n` +
      `cni_plugin_dirs = ["${x}/cni-bin"]\nnetwork_config_dir = "${x}/cni-conf"\n` +
      `[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]\n`,
  );
  await Deno.writeTextFile(
    `${x}/storage.conf`,
    `[storage]\ndriver = "vfs"\ngraphroot = "${x}/storage/graph"\nrunroot = "${x}/storage/run"\n`,
  );
  await makeRootfs(`${x}/rootfs`);
  const podman = async (args: string[], labels?: string) => {
    const o = await new Deno.Command("podman", {
      args,
      env: {
        CONTAINERS_CONF: `${x}/containers.conf`,
        CONTAINERS_STORAGE_CONF: `${x}/storage.conf`,
        CILIA_DENO: Deno.execPath(),
        ...(labels ? { CNI_ARGS: `CILIA_LABELS=${labels}` } : {}),
      },
      stdin: "null",
    }).output();
    return { code: o.code, out: dec.decode(o.stdout).trim(), err: dec.decode(o.stderr).trim() };
  };
  const run = (name: string, labels: string, cmd: string, detach = false) =>
    podman(
      [
        "run",
        ...(detach ? ["-d"] : ["--rm"]),
        "--name",
        name,
        "--network",
        NETWORK,
        "--rootfs",
        `${x}/rootfs`,
        "/bin/sh",
        "-c",
        cmd,
      ],
      labels,
    );

  try {
    await n.policy(POLICY);
    let webIp = "";
    await t.step("podman run: the container gets its address from cilia", async () => {
      const r = await run("web", "app=web", "exec httpd -f -p 8080 -h /www", true);
      assert.equal(r.code, 0, r.err);
      const inspect = await podman(["inspect", "web"]);
      const net = JSON.parse(inspect.out)[0].NetworkSettings.Networks[NETWORK];
      const ep = (await n.call("GET", "/v1/endpoint/default/web")).body;
      assert.equal(net.IPAddress, ep.ipv4);
      assert.equal(net.IPPrefixLen, 32);
      assert.equal(net.Gateway, "10.200.0.1");
      assert.equal(ep.containerId, r.out);
      assert.deepEqual(ep.labels, { app: "web" });
      webIp = ep.ipv4;
    });

    await t.step("policy between containers: client allowed, other denied", async () => {
      // busybox 1.35's wget -T segfaults, so the timeout applet bounds it; "; exit" keeps sh as
      // PID 1 (a signal to PID 1 without a handler is ignored, so wget must not be PID 1).
      const fetch = `timeout 2 wget -q -O - http://${webIp}:8080/index.html; exit $?`;
      const ok = await run("client", "app=client", fetch);
      assert.equal(ok.code, 0, ok.err);
      assert.equal(ok.out, "hello from web");
      const web = (await n.call("GET", "/v1/endpoint/default/web")).body;
      const { result: denied, events } = await n.withEvents(
        () => run("other", "app=other", fetch),
        { until: (e) => e.type === "drop" },
      );
      assert.notEqual(denied.code, 0, `a container without app=client got through: ${denied.out}`);
      const drop = events.find((e) => e.type === "drop");
      assert.ok(drop, "a drop event");
      assert.deepEqual([drop.subtype, drop.dstIdentity, drop.dport], [133, web.identity, 8080]);
      const left = ((await n.call("GET", "/v1/endpoint")).body as { name: string }[])
        .map((e) => e.name);
      assert.deepEqual(left, ["web"], "--rm containers were DELeted");
    });

    await t.step("podman stop: DEL removes the endpoint", async () => {
      const r = await podman(["stop", "-t", "1", "web"]);
      assert.equal(r.code, 0, r.err);
      await eventually(
        "the endpoint to go",
        async () => (await n.call("GET", "/v1/endpoint/default/web")).status === 404,
      );
    });
  } finally {
    await podman(["rm", "-f", "-a"]);
    const results = "/var/lib/cni/results";
    if (await exists(results)) {
      for await (const e of Deno.readDir(results)) {
        if (e.name.startsWith(`${NETWORK}-`)) await Deno.remove(`${results}/${e.name}`);
      }
    }
    if (!hadResults) await Deno.remove("/var/lib/cni/results").catch(() => {});
    if (!hadCniDir) await Deno.remove("/var/lib/cni").catch(() => {});
    for (const dir of await libpodCgroups()) await Deno.remove(dir).catch(() => {});
  }
});
