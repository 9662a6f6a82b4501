// Services beyond picking a backend (bpf/lib/lb.h 6. and 7.), with real packets on one lab:
// sessionAffinity ClientIP keeps a client's new connections on one backend until the timeout,
// and a backend that leaves the service ends affinity to it; a terminating backend finishes its
// established connections and gets no new ones; removing a backend ends only the connections to
// it; an agent restart keeps services and established connections on their backends; a UDP
// service carries DNS to dnsmasq in a backend pod, the answers coming from the VIP. Backends
// answer every read with their name; a long-lived client pod process holds connections open
// and is driven over stdin. Needs root.
import assert from "node:assert/strict";
import { CiliaNode, root, type TestPod } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { CLIENT_LIB, denoIn, NAME_SERVER } from "./_services_lab.ts";

const VIP = "10.96.1.10", DNS_VIP = "10.96.1.53";

// stdin commands, one answer line each: "open" → the connection's index (or ERR);
// "ask I" → the name connection I answers with (or ERR); "burst N" → a JSON array of the names
// N fresh connections answer with (null: failed). Timeouts bound answers that must come (3 s:
// a loaded machine is slow); "ask K MS" takes a shorter one where no answer is expected.
const CLIENT = `${CLIENT_LIB}
const [host, port] = Deno.args;
const OK_MS = 3000;
const conns = [];
const say = (s) => Deno.stdout.write(enc.encode(s + "\\n"));
let rest = "";
for await (const chunk of Deno.stdin.readable) {
  rest += dec.decode(chunk);
  let i;
  while ((i = rest.indexOf("\\n")) >= 0) {
    const [cmd, arg, msArg] = rest.slice(0, i).split(" "); rest = rest.slice(i + 1);
    if (cmd === "open") {
      try { conns.push(await within(Deno.connect({ hostname: host, port: Number(port) }), OK_MS)); await say(String(conns.length - 1)); }
      catch { await say("ERR"); }
    } else if (cmd === "ask") {
      const ms = Number(msArg ?? OK_MS);
      try { await say(await within(ask(conns[Number(arg)]), ms)); } catch { await say("ERR"); }
    } else if (cmd === "burst") {
      const out = [];
      for (let k = 0; k < Number(arg); k++) {
        let c;
        try { c = await within(Deno.connect({ hostname: host, port: Number(port) }), OK_MS); out.push(await within(ask(c), OK_MS)); }
        catch { out.push(null); }
        try { c?.close(); } catch {}
      }
      await say(JSON.stringify(out));
    }
  }
}`;

/** The client pod's driver: one process, connections kept open between calls. */
class Client {
  readonly #proc: Deno.ChildProcess;
  readonly #w: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncIterator<string>;
  constructor(proc: Deno.ChildProcess) {
    this.#proc = proc;
    this.#w = proc.stdin.getWriter();
    this.#lines = proc.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter())
      [Symbol.asyncIterator]();
  }
  async #cmd(text: string): Promise<string> {
    await this.#w.write(new TextEncoder().encode(text + "\n"));
    const r = await this.#lines.next();
    if (r.done) throw new Error(`The client pod's process ended before answering "${text}"`);
    return r.value;
  }
  async open(): Promise<number> {
    const r = await this.#cmd("open");
    assert.notEqual(r, "ERR", "the connection opens");
    return Number(r);
  }
  /** The backend's name on connection i ("ERR" when none came within ms, default 3 s). */
  ask(i: number, ms?: number): Promise<string> {
    return this.#cmd(ms === undefined ? `ask ${i}` : `ask ${i} ${ms}`);
  }
  async burst(n: number): Promise<(string | null)[]> {
    return JSON.parse(await this.#cmd(`burst ${n}`));
  }
  async close(): Promise<void> {
    try {
      await this.#w.close();
    } catch { /* gone */ }
    try {
      this.#proc.kill("SIGKILL");
    } catch { /* gone */ }
    await this.#proc.status;
  }
}

function lineSplitter(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, ctl) {
      rest += chunk;
      let i;
      while ((i = rest.indexOf("\n")) >= 0) {
        ctl.enqueue(rest.slice(0, i));
        rest = rest.slice(i + 1);
      }
    },
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test({
  name: "services: session affinity, terminating backends and an agent restart",
  ...needsRoot(["dnsmasq", "dig"]),
  sanitizeResources: false,
}, async (t) => {
  await using n = await CiliaNode.create();
  const servers: Deno.ChildProcess[] = [];
  let client: Client | undefined;
  try {
    await Deno.writeTextFile(`${n.dir}/server.js`, NAME_SERVER);
    await Deno.writeTextFile(`${n.dir}/client.js`, CLIENT);
    const inNetns = (netns: string, script: string, args: string[], piped = false) =>
      denoIn(netns, script, args, {
        stdin: piped ? "piped" : "null",
        stdout: piped ? "piped" : "null",
      });
    const backends: Record<string, TestPod> = {};
    for (const name of ["b1", "b2", "b3"]) {
      backends[name] = await n.addPod(name, { app: name });
      servers.push(inNetns(backends[name].netns, `${n.dir}/server.js`, [name, "8080"]).spawn());
    }
    const pod = await n.addPod("client", { app: "client" });
    for (const b of Object.values(backends)) {
      for (let i = 0; i < 100; i++) {
        if ((await n.lab.run(b.netns, ["ss", "-Htln", "sport = :8080"])).trim() !== "") break;
        await sleep(50);
      }
    }
    client = new Client(inNetns(pod.netns, `${n.dir}/client.js`, [VIP, "80"], true).spawn());
    const c = client;
    const addr = (b: string) => `${backends[b]!.ipv4}:8080`;
    const cli = async (args: string[]) => {
      const out = await new Deno.Command(`${root}bin/cilia`, {
        args: [...args, "-H", `unix://${n.socket}`],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = (b: Uint8Array) => new TextDecoder().decode(b);
      return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
    };
    const upsert = async (names: string[], extra: string[] = []) => {
      const r = await cli([
        "service",
        "upsert",
        "--frontend",
        `${VIP}:80/TCP`,
        "--backends",
        names.map(addr).join(","),
        ...extra,
      ]);
      assert.equal(r.code, 0, r.stderr);
    };
    const distinct = (xs: (string | null)[]) => [...new Set(xs)];

    let sticky = "";
    await t.step(
      "ClientIP affinity: every new connection of the client goes to one backend",
      async () => {
        await upsert(["b1", "b2", "b3"], ["--session-affinity", "--affinity-timeout", "1s"]);
        const got = await c.burst(12);
        assert.ok(got.every((x) => x !== null), `all answered: ${got}`);
        assert.equal(distinct(got).length, 1, `one backend: ${got}`);
        sticky = got[0]!;
        const list = JSON.parse((await cli(["service", "list", "-o", "json"])).stdout);
        assert.equal(list[0].sessionAffinity, "ClientIP");
        assert.equal(list[0].affinityTimeoutSeconds, 1);
      },
    );

    await t.step("affinity expires after the timeout without new connections", async () => {
      const firsts = new Set<string | null>();
      for (let i = 0; i < 6 && firsts.size < 2; i++) {
        await sleep(1300);
        const got = await c.burst(3);
        assert.equal(distinct(got).length, 1, `sticky again after the pick: ${got}`);
        firsts.add(got[0]!);
      }
      assert.ok(firsts.size >= 2, `a new backend after expiry: ${[...firsts]}`);
    });

    await t.step("a backend removed from the service ends affinity to it", async () => {
      await upsert(["b1", "b2", "b3"], ["--session-affinity"]); // 3 h
      sticky = (await c.burst(1))[0]!;
      const others = ["b1", "b2", "b3"].filter((b) => b !== sticky);
      await upsert(others, ["--session-affinity"]);
      const got = await c.burst(8);
      assert.equal(distinct(got).length, 1, `one backend: ${got}`);
      assert.ok(others.includes(got[0]!), `not the removed ${sticky}: ${got}`);
      sticky = got[0]!;
    });

    await t.step("without affinity, new connections spread again", async () => {
      await upsert(["b1", "b2", "b3"]);
      const got = await c.burst(15);
      assert.ok(distinct(got).length >= 2, `spread: ${got}`);
    });

    const held: Record<string, number> = {};
    await t.step("a terminating backend keeps its connections and gets no new ones", async () => {
      for (let i = 0; i < 40 && Object.keys(held).length < 3; i++) {
        const k = await c.open();
        const who = await c.ask(k);
        if (held[who] === undefined) held[who] = k;
      }
      assert.deepEqual(Object.keys(held).sort(), ["b1", "b2", "b3"], "one connection per backend");
      await upsert(["b1", "b2", "b3"], ["--terminating", addr("b3")]);
      const list = await cli(["service", "list"]);
      assert.match(list.stdout, /:8080\(terminating\)/);
      assert.equal(await c.ask(held.b3!), "b3", "the established connection to b3 goes on");
      const got = await c.burst(12);
      assert.ok(got.every((x) => x === "b1" || x === "b2"), `no new ones on b3: ${got}`);
    });

    await t.step("an agent restart keeps services and established connections", async () => {
      assert.equal(await n.stopAgent(), 0);
      for (const [b, k] of Object.entries(held)) {
        assert.equal(await c.ask(k), b, `${b}'s connection while the agent is down`);
      }
      await n.startAgent();
      for (const [b, k] of Object.entries(held)) {
        assert.equal(await c.ask(k), b, `${b}'s connection after the restart`);
      }
      const got = await c.burst(12);
      assert.ok(got.every((x) => x === "b1" || x === "b2"), `b3 still terminating: ${got}`);
    });

    await t.step(
      "UDP: DNS through a ClusterIP reaches dnsmasq; answers come from the VIP",
      async () => {
        servers.push(
          new Deno.Command("ip", {
            args: [
              "netns",
              "exec",
              backends.b1!.netns,
              "dnsmasq",
              "--no-daemon",
              "--port=53",
              `--listen-address=${backends.b1!.ipv4}`,
              "--bind-interfaces",
              "--no-resolv",
              "--no-hosts",
              "--address=/svc.example.com/192.0.2.7",
              `--pid-file=${n.dir}/dnsmasq.pid`,
            ],
            stdout: "null",
            stderr: "null",
          }).spawn(),
        );
        const r = await cli([
          "service",
          "create",
          "--frontend",
          `${DNS_VIP}:53/UDP`,
          "--backends",
          `${backends.b1!.ipv4}:53`,
        ]);
        assert.equal(r.code, 0, r.stderr);
        let out = "";
        for (let i = 0; i < 20 && !/status: NOERROR/.test(out); i++) {
          out = await n.lab.run(pod.netns, [
            "dig",
            "+time=1",
            "+tries=1",
            `@${DNS_VIP}`,
            "svc.example.com",
            "A",
          ]).catch((e) => String(e));
          if (!/status: NOERROR/.test(out)) await sleep(100); // dnsmasq starting
        }
        assert.match(out, /^svc\.example\.com\.\s+\d+\s+IN\s+A\s+192\.0\.2\.7$/m, out);
        assert.match(out, new RegExp(`SERVER: ${DNS_VIP.replaceAll(".", "\\.")}#53`), out);
      },
    );

    await t.step("removing a backend ends only the connections to it", async () => {
      await upsert(["b1", "b2"]);
      assert.equal(await c.ask(held.b1!), "b1");
      assert.equal(await c.ask(held.b2!), "b2");
      assert.notEqual(await c.ask(held.b3!, 1000), "b3", "b3's connection ended");
    });
  } finally {
    await client?.close();
    for (const s of servers) {
      try {
        s.kill("SIGKILL");
      } catch { /* gone */ }
      await s.status;
    }
  }
});
