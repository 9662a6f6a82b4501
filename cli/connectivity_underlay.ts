// The underlay of a multi-node connectivity lab (`cilia connectivity test --nodes 2`): a netns
// holding a bridge at 192.0.2.254/24 (a documentation range, inside the lab only) with one real
// etcd listening on it, and node netns plugged into the bridge with eth0 = 192.0.2.<i>. The
// agents of the nodes use that etcd as their kvstore and 192.0.2.<i> as node IP. Creating and
// removing the namespaces is the lab's job (connectivity_lab.ts); this module starts and stops
// etcd and wires the links.

export const UNDERLAY_IP = "192.0.2.254";
export const ETCD_URL = `http://${UNDERLAY_IP}:2379`;
const dec = new TextDecoder();

async function sh(netns: string, cmd: string): Promise<string> {
  const o = await new Deno.Command("ip", {
    args: ["netns", "exec", netns, "sh", "-c", cmd],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (o.code !== 0) {
    throw new Error(`Command failed in "${netns}": "${cmd}": ${dec.decode(o.stderr).trim()}`);
  }
  return dec.decode(o.stdout);
}

/** The bridge in `netns` (already created) and etcd on it, data in `dataDir`; healthy on return. */
export async function startUnderlay(netns: string, dataDir: string): Promise<Deno.ChildProcess> {
  await sh(
    netns,
    `ip link set lo up && ip link add br0 type bridge && ip link set br0 up && ` +
      `ip addr add ${UNDERLAY_IP}/24 dev br0`,
  );
  // deno-fmt-ignore
  const etcd = new Deno.Command("ip", {
    args: ["netns", "exec", netns, "etcd", "--name", "ct", "--data-dir", dataDir,
      "--listen-client-urls", ETCD_URL, "--advertise-client-urls", ETCD_URL,
      "--listen-peer-urls", "http://127.0.0.1:2380",
      "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
      "--initial-cluster", "ct=http://127.0.0.1:2380",
      "--heartbeat-interval", "10", "--election-timeout", "100", "--unsafe-no-fsync",
      "--log-level", "error", "--logger", "zap"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (const deadline = Date.now() + 10_000; Date.now() < deadline;) {
    const r = await sh(netns, `curl -s -m 1 ${ETCD_URL}/health || true`);
    if (r.includes(`"health":"true"`)) return etcd;
    await new Promise((r) => setTimeout(r, 20));
  }
  await stopEtcd(etcd);
  throw new Error(`etcd in "${netns}" did not become healthy within 10 s (is etcd installed?)`);
}

/** Plugs node `i` (1-based) into the bridge: eth0 = 192.0.2.<i>/24. */
export async function plugNode(
  underlay: string,
  node: string,
  o: { i: number; port: string },
): Promise<string> {
  const ip = `192.0.2.${o.i}`;
  await sh(
    node,
    `ip link add eth0 type veth peer name ${o.port} netns ${underlay} && ` +
      `ip addr add ${ip}/24 dev eth0 && ip link set eth0 up`,
  );
  await sh(underlay, `ip link set ${o.port} master br0 up`);
  return ip;
}

export async function stopEtcd(etcd: Deno.ChildProcess): Promise<void> {
  try {
    etcd.kill("SIGKILL");
  } catch { /* exited */ }
  await etcd.status;
}
