/**
 * Starts a real, throw-away etcd for a test: a temp data dir, free ports on 127.0.0.1, the
 * fast-start flags from MACHINE.md §5, and a `stop()` that kills it, waits for it and removes
 * the dir. It never skips: a missing etcd is an error naming the package to install (tests that
 * start one declare `needs({ binaries: ["etcd"] })`, tests/helpers/root.ts, to be ignored with
 * that reason on a machine without etcd).
 */

const CANDIDATES = ["/usr/bin/etcd", "/usr/local/bin/etcd"];

export interface RunningEtcd {
  /** For `openKvStore()`: `etcd://127.0.0.1:<port>`. */
  url: string;
  /** `127.0.0.1:<port>`. */
  endpoints: string;
  stop(): Promise<void>;
}

async function findEtcd(): Promise<string> {
  for (const path of CANDIDATES) {
    try {
      if ((await Deno.stat(path)).isFile) return path;
    } catch {
      // try the next one
    }
  }
  throw new Error(
    `Cannot start etcd: no binary at ${CANDIDATES.map((p) => `"${p}"`).join(" or ")}: ` +
      `install it with "apt-get install etcd-server"`,
  );
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

export async function startEtcd(): Promise<RunningEtcd> {
  const bin = await findEtcd();
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await launch(bin); // a port taken between freePort() and etcd's bind: retry
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

async function launch(bin: string): Promise<RunningEtcd> {
  const dir = await Deno.makeTempDir({ prefix: "cilia-etcd-" });
  const [client, peer] = [freePort(), freePort()];
  const clientUrl = `http://127.0.0.1:${client}`;
  const peerUrl = `http://127.0.0.1:${peer}`;
  // deno-fmt-ignore
  const args = [
    "--name", "t", "--data-dir", `${dir}/data`,
    "--listen-client-urls", clientUrl, "--advertise-client-urls", clientUrl,
    "--listen-peer-urls", peerUrl, "--initial-advertise-peer-urls", peerUrl,
    "--initial-cluster", `t=${peerUrl}`,
    "--heartbeat-interval", "10", "--election-timeout", "100", "--unsafe-no-fsync",
    "--log-level", "warn", "--logger", "zap",
  ];
  const child = new Deno.Command(bin, { args, stdin: "null", stdout: "null", stderr: "piped" })
    .spawn();
  let log = "";
  const drained = (async () => {
    const text = new TextDecoder();
    for await (const chunk of child.stderr) log = (log + text.decode(chunk)).slice(-4000);
  })();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  let stopped: Promise<void> | undefined;
  const stop = () =>
    stopped ??= (async () => {
      if (!exited) child.kill("SIGKILL"); // a test etcd has nothing worth a clean shutdown
      await status;
      await drained;
      await Deno.remove(dir, { recursive: true });
    })();
  try {
    await waitHealthy(clientUrl, () => exited);
  } catch (err) {
    await stop();
    throw new Error(`Cannot start etcd on ${clientUrl}: ${(err as Error).message}: ${log}`, {
      cause: err,
    });
  }
  return { url: `etcd://127.0.0.1:${client}`, endpoints: `127.0.0.1:${client}`, stop };
}

async function waitHealthy(url: string, exited: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (exited()) throw new Error("etcd exited during startup");
    try {
      const res = await fetch(`${url}/health`);
      const body = await res.text();
      if (res.ok && body.includes(`"health":"true"`)) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error("/health did not report healthy within 10 s");
}
