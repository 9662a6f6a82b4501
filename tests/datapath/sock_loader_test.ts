// The socket LB's cgroup checks (agent/datapath/sock_loader.ts): --cgroup-root must be a cgroup v2
// directory, and the error names the path and what it is on (stat only, no root); every program of
// sock.o has its attach point (its BTF); socket termination (root, python3: below).
import assert from "node:assert/strict";
import { checkCgroup2, defaultCgroupRoot, SOCK_PROGS } from "../../agent/datapath/sock_loader.ts";
import { encodeTermKey, loadSockTerm, terminateSockets } from "../../agent/datapath/sock_term.ts";
import { execCommand } from "../../agent/sys/exec.ts";
import { buildObject } from "../../agent/datapath/build.ts";
import { needsRoot } from "../helpers/root.ts";

Deno.test("sock LB: --cgroup-root that is not cgroup2 is refused naming the path", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-sock-" });
  try {
    await assert.rejects(
      checkCgroup2(dir),
      new RegExp(`Invalid --cgroup-root "${dir}": it is on "[^"]+", not cgroup2`),
    );
    await assert.rejects(
      checkCgroup2(`${dir}/missing`),
      new RegExp(`Invalid --cgroup-root "${dir}/missing": .*No such file`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sock LB: the default cgroup root is a cgroup2 mount and passes the check", async () => {
  const mounts = await Deno.readTextFile("/proc/self/mountinfo");
  if (!mounts.includes(" - cgroup2 ")) {
    await assert.rejects(defaultCgroupRoot(), /no cgroup2 mount in this mount namespace/);
    return;
  }
  const root = await defaultCgroupRoot();
  await checkCgroup2(root);
});

Deno.test({
  name: "sock LB: SOCK_PROGS attaches every program of sock.o (the sockops one included)",
  ignore: (await execCommand(["sh", "-c", "command -v bpftool clang"])).code !== 0,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-sock-btf-" });
  try {
    const obj = await buildObject({ buildDir: dir, name: "sock" });
    const btf = await sh(["bpftool", "btf", "dump", "file", obj.path]);
    const progs = [...btf.matchAll(/FUNC '(\w+)' type_id=\d+ linkage=global/g)].map((m) => m[1]);
    assert.deepEqual(progs.sort(), Object.values(SOCK_PROGS).sort());
    assert.equal(SOCK_PROGS.cgroup_sock_ops, "cil_sock_ops");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// Socket termination (agent/datapath/sock_term.ts, bpf/sock_term.c) with real sockets: 100
// network namespaces, in one of them two loopback connections, one marked as translated by the
// socket LB (its cookie in cilia_lb_sock_revnat, as sock.c's connect writes it); a run for another
// service leaves it, a run for its service ends it and not the other; a namespace that cannot be
// entered is reported and the walk goes on; the pairs are gone from the map afterwards, also after
// a Worker that could not return to its netns and one stopped past its bound; the walk runs in a
// Worker, so this thread's event loop keeps ticking meanwhile and never leaves its netns.
const HOLD = `
import errno, json, socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 9000)); srv.listen()
def serve(c):
    try:
        while (d := c.recv(64)): c.send(d)
    except OSError:
        pass
threading.Thread(target=lambda: [threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start() for _ in range(2)], daemon=True).start()
cs = [socket.create_connection(("127.0.0.1", 9000), timeout=2) for _ in range(2)]
print(json.dumps([int.from_bytes(c.getsockopt(socket.SOL_SOCKET, 57, 8), "little") for c in cs]), flush=True)
def ex(c):
    try:
        c.send(b"x"); return "ok" if c.recv(64) else "EOF"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
for line in sys.stdin: print(json.dumps([ex(c) for c in cs]), flush=True)
`;

Deno.test({
  name: "sock LB: termination ends only the translated socket, in 100 namespaces",
  ...needsRoot(["python3"]),
  sanitizeResources: false,
}, async () => {
  const tag = crypto.randomUUID().slice(0, 6);
  const dir = await Deno.makeTempDir({ prefix: `cilia-stt-${tag}-` });
  const bpffs = `${dir}/bpf`,
    names = Array.from({ length: 100 }, (_, i) => `cilia-stt-${tag}-${i}`);
  const made: string[] = [];
  let mounted = false, holder: Deno.ChildProcess | undefined;
  try {
    await Deno.mkdir(bpffs);
    await sh(["mount", "-t", "bpf", "bpf", bpffs]);
    mounted = true;
    await Deno.mkdir(`${bpffs}/maps`);
    await sh(["bpftool", "map", "create", `${bpffs}/maps/cilia_lb_sock_revnat`, "type", "lru_hash"]
      .concat(["key", "32", "value", "20", "entries", "65536", "name", "cilia_lb_sock_revnat"]));
    const pins = await loadSockTerm({ bpffsRoot: bpffs, buildDir: `${dir}/build` });
    for (const n of names) {
      await sh(["ip", "netns", "add", n]);
      made.push(n);
    }
    const target = names[50]!;
    await sh(["ip", "-n", target, "link", "set", "lo", "up"]);
    holder = new Deno.Command("ip", {
      args: ["netns", "exec", target, "python3", "-c", HOLD],
      stdin: "piped",
      stdout: "piped",
    }).spawn();
    const lines = holder.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(splitLines())
      .getReader();
    const w = holder.stdin.getWriter();
    const ask = async () => {
      await w.write(new TextEncoder().encode("\n"));
      return JSON.parse((await lines.read()).value!) as string[];
    };
    const [cookie] = JSON.parse((await lines.read()).value!) as [number, number];
    const key = new Uint8Array(32), kv = new DataView(key.buffer);
    kv.setBigUint64(0, BigInt(cookie), true);
    key.set([127, 0, 0, 1], 8);
    kv.setUint16(24, 9000);
    key[26] = 4;
    const value = new Uint8Array(20);
    value.set([10, 96, 0, 99], 0);
    new DataView(value.buffer).setUint16(16, 80);
    value[18] = 4;
    const hex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0"));
    await sh(["bpftool", "map", "update", "pinned", `${bpffs}/maps/cilia_lb_sock_revnat`, "key"]
      .concat("hex", hex(key), "value", "hex", hex(value)));
    const paths = names.map((n) => `/run/netns/${n}`);
    const pair = (svc: string) => ({
      frontend: { ip: svc, port: 80, protocol: "TCP" as const },
      backend: { ip: "127.0.0.1", port: 9000 },
    });
    assert.deepEqual(await ask(), ["ok", "ok"]);

    const other = await terminateSockets(pins, [pair("10.96.0.98")], paths);
    assert.equal(other.walked, 101, JSON.stringify(other));
    assert.deepEqual(await ask(), ["ok", "ok"], "a run for another service ends nothing");

    const mapLeft = async () =>
      JSON.parse(await sh(["bpftool", "-j", "map", "dump", "pinned", pins.map]));
    const ownNetns = () => Deno.readLinkSync("/proc/thread-self/ns/net");
    const home = ownNetns();

    // A Worker that cannot return to its netns (its fd closed: setns back fails for real) is
    // reported and terminated; this thread never left its netns and the pairs are gone.
    await assert.rejects(
      terminateSockets(pins, [pair("10.96.0.97")], paths, { faultCloseHome: true }),
      (err: Error) => {
        assert.equal(err.name, "NetnsRestoreError");
        assert.match(err.message, /Cannot return to the worker's netns from ".*-0": Bad file/);
        return true;
      },
    );
    assert.equal(ownNetns(), home);
    assert.deepEqual(await mapLeft(), [], "the pairs are deleted after a stuck worker");

    // A walk past its bound (2,000 namespaces, ~4 s, against 300 ms) fails naming the bound; its
    // Worker is stopped mid-walk (at home, its fds closed: none is left open here) and the pairs
    // are deleted all the same.
    const long = Array.from({ length: 20 }, () => paths).flat();
    const fds = () => [...Deno.readDirSync("/proc/self/fd")].length, fdsBefore = fds();
    await assert.rejects(
      terminateSockets(pins, [pair("10.96.0.97")], long, { timeoutMs: 300 }),
      /Socket termination did not answer within 300 ms \(2001 namespaces\): its worker was stopped$/,
    );
    assert.equal(ownNetns(), home);
    assert.deepEqual(await mapLeft(), [], "the pairs are deleted after a timeout");
    await new Promise((r) => setTimeout(r, 100)); // the ended thread's runtime fds go
    assert.ok(fds() <= fdsBefore, `fds before ${fdsBefore}, after ${fds()}`);

    // A later run (a fresh Worker) works; this thread's event loop runs on during it: a 1 ms
    // interval keeps ticking.
    const load = (await Deno.readTextFile("/proc/loadavg")).split(" ")[0];
    let last = performance.now(), gap = 0, ticks = 0;
    const tick = setInterval(() => {
      const now = performance.now();
      gap = Math.max(gap, now - last);
      last = now;
      ticks++;
    }, 1);
    const t0 = performance.now();
    let r;
    try {
      r = await terminateSockets(pins, [pair("10.96.0.99")], [...paths, `${dir}/nope`]);
    } finally {
      clearInterval(tick);
    }
    const ms = performance.now() - t0;
    console.log(
      `termination over 101 namespaces: ${ms.toFixed(1)} ms (load ${load}); main thread: ` +
        `${ticks} ticks, longest gap ${gap.toFixed(1)} ms`,
    );
    assert.ok(gap < 50, `the main thread was blocked ${gap.toFixed(1)} ms`);
    assert.ok(ms > 2 * gap, `the walk (${ms.toFixed(1)} ms) is too short to show it`);
    assert.equal(r.walked, 101);
    assert.equal(r.failed.length, 1);
    assert.equal(r.failed[0]!.netns, `${dir}/nope`);
    assert.match(r.failed[0]!.error, /No such file/);
    assert.deepEqual(await ask(), ["ECONNABORTED", "ok"], "only the translated socket ends");
    assert.deepEqual(await mapLeft(), [], "the pairs are deleted after the run");
    assert.equal(ownNetns(), home);
    await w.close();
    lines.releaseLock();
  } finally {
    if (holder) {
      try {
        holder.kill("SIGKILL");
      } catch { /* gone */ }
      await holder.stdout.cancel().catch(() => {});
      await holder.status;
    }
    for (const n of made) await execCommand(["ip", "netns", "del", n]);
    if (mounted) await execCommand(["umount", bpffs]);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "sock LB: encodeTermKey() matches struct sock_term_key in the object's BTF",
  ignore: (await execCommand(["sh", "-c", "command -v bpftool clang"])).code !== 0,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-stt-btf-" });
  try {
    const obj = await buildObject({ buildDir: dir, name: "sock_term" });
    const btf = await sh(["bpftool", "btf", "dump", "file", obj.path]);
    const m = btf.match(/STRUCT 'sock_term_key' size=(\d+) vlen=\d+\n((?:\t.*\n)+)/);
    assert.ok(m, "sock_term_key in the BTF");
    const bytes = Object.fromEntries(
      [...m[2]!.matchAll(/'(\w+)' type_id=\d+ bits_offset=(\d+)/g)].map((x) => [x[1], +x[2]! / 8]),
    );
    const key = encodeTermKey({
      frontend: { ip: "10.96.0.1", port: 80, protocol: "UDP" },
      backend: { ip: "10.1.2.3", port: 8080 },
    });
    assert.equal(key.length, Number(m[1]));
    const at = (f: string, n: number) => [...key.subarray(bytes[f], bytes[f] + n)];
    assert.deepEqual(at("addr", 4), [10, 1, 2, 3]);
    assert.deepEqual(at("svc_addr", 4), [10, 96, 0, 1]);
    assert.deepEqual(at("port", 2), [0x1f, 0x90]); // network order
    assert.deepEqual(at("svc_port", 2), [0, 80]);
    assert.deepEqual([...at("family", 1), ...at("proto", 1)], [4, 17]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sock LB: a termination pair of mixed families is refused naming both", () => {
  assert.throws(
    () =>
      encodeTermKey({
        frontend: { ip: "10.96.0.1", port: 80, protocol: "TCP" },
        backend: { ip: "fd00::1", port: 80 },
      }),
    /Backend "fd00::1" is of another family than "10.96.0.1"/,
  );
  assert.throws(
    () =>
      encodeTermKey({
        frontend: { ip: "10.96.0.1", port: 80, protocol: "TCP" },
        backend: { ip: "nope", port: 80 },
      }),
    /Invalid backend address "nope"/,
  );
});

/** Text chunks → lines. */
function splitLines(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, c) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      for (const l of parts) c.enqueue(l);
    },
  });
}

async function sh(argv: string[]): Promise<string> {
  const r = await execCommand(argv);
  if (r.code !== 0) throw new Error(`${argv.join(" ")}: exit ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}
