// The L7 proxy's HTTP Worker path (issue 10; `httpIo: "worker"`, http_worker.ts) end to end on
// loopback, with the kernel's proxy maps as real pinned BPF maps in a bpffs of the test's own (no
// datapath: the test writes the original-destination entry the tc program would): the listener
// the main thread made is served by the Worker, each request judged by the one engine (the
// agent's L7 rule shape), allowed ones forwarded over an upstream leg whose proxy-NAT entry was
// written, denied ones answered 403, records batched back with rule and cookie, a cached verdict
// dropped when the engine changes, a connection the kernel did not redirect closed unread, h2c
// relayed to the event loop, and a Worker that fails: every fd it had closed, then a new one.
// Needs root (bpffs, BPF maps).
import assert from "node:assert/strict";
import net from "node:net";
import { compilePolicies, PolicyEngine, SimCluster } from "@cilia/policy-wasm";
import { L7Proxy, type L7Record } from "../../agent/proxy/proxy.ts";
import { ProxyMaps } from "../../agent/datapath/proxy_maps.ts";
import { encode, LAYOUTS } from "../../agent/datapath/codecs.ts";
import {
  acquire,
  closeFd,
  mapLookup,
  mapUpdate,
  objGet,
  release,
} from "../../agent/datapath/ffi.ts";
import { Metrics } from "../../agent/metrics.ts";
import { SILENT } from "../../agent/log.ts";
import { needsRoot } from "../helpers/root.ts";

const ORIGIN_PORT = 28431;
const UPSTREAM: [number, number] = [27400, 27499];

const policy = (paths: string[]) =>
  `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-worker, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "${ORIGIN_PORT}", protocol: TCP}]
      rules:
        http:
${paths.map((p) => `        - {method: GET, path: ${p}}`).join("\n")}
`;

async function run(cmd: string, args: string[]): Promise<void> {
  const r = await new Deno.Command(cmd, { args, stderr: "piped" }).output();
  if (!r.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
  }
}

/**
 * A request from 127.0.0.1:`localPort` to the proxy; the whole answer once it closes (or its
 * first `upTo` bytes, the connection left open until then).
 */
function exchange(port: number, localPort: number, text: string, upTo = 0): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(
      { host: "127.0.0.1", port, localPort },
      () => upTo ? s.write(text) : s.end(text),
    );
    let got = "";
    s.setEncoding("latin1");
    s.on("data", (d) => {
      got += d;
      if (upTo && got.length >= upTo) s.destroy();
    });
    s.on("error", reject);
    s.on("close", () => resolve(got));
    s.setTimeout(3000, () => s.destroy(new Error(`no answer: ${JSON.stringify(got)}`)));
  });
}

Deno.test({
  name: "L7Proxy with the HTTP Worker serves, denies, records and re-judges after a change",
  ...needsRoot(),
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-http-worker-" });
  const bpffs = `${dir}/bpf`;
  await Deno.mkdir(bpffs);
  await run("mount", ["-t", "bpf", "bpf", bpffs]);
  const origin = Deno.serve(
    { hostname: "127.0.0.1", port: ORIGIN_PORT, onListen() {} },
    (req) => new Response(`path=${new URL(req.url).pathname}\n`),
  );
  const engine = await PolicyEngine.create();
  let proxy: L7Proxy | undefined;
  const closers: (() => void)[] = [];
  acquire();
  try {
    const pins = { cfg: `${bpffs}/cfg`, orig: `${bpffs}/orig`, nat: `${bpffs}/nat` };
    await run("bpftool", ["map", "create", pins.cfg, "type", "array", ...kv(4, 32), "name", "cfg"]);
    await run("bpftool", [
      "map",
      "create",
      pins.orig,
      "type",
      "hash",
      ...kv(24, 36),
      "name",
      "orig",
    ]);
    await run("bpftool", ["map", "create", pins.nat, "type", "hash", ...kv(24, 28), "name", "nat"]);
    const origFd = objGet(pins.orig), natFd = objGet(pins.nat);
    const cluster = new SimCluster({
      endpoints: ["client", "server"].map((app) => ({ name: app, labels: { app } })),
    });
    const load = (paths: string[]) =>
      cluster.load(engine, compilePolicies({ text: policy(paths) }).spec, engine.options);
    load(["/public"]);
    const server = cluster.endpoint("server")!, client = cluster.endpoint("client")!;
    const records: L7Record[] = [];
    const maps = new ProxyMaps(pins);
    closers.push(() => maps.close(), () => closeFd(origFd), () => closeFd(natFd));
    proxy = new L7Proxy({
      engine,
      maps,
      log: SILENT,
      metrics: new Metrics(),
      basePort: 25401,
      upstreamPorts: UPSTREAM,
      httpIo: "worker",
      headerTimeoutMs: 500,
      onRecord: (r) => records.push(r),
    });
    proxy.gateway = "127.0.0.1";
    const port = await proxy.listen(server.id, "ingress", ORIGIN_PORT);
    /** What the tc program writes for a redirected connection from 127.0.0.1:clientPort. */
    const redirect = (clientPort: number) => {
      const key = encode(LAYOUTS.proxyOrigKey, {
        client_ip: new Uint8Array([127, 0, 0, 1, ...new Array(12).fill(0)]),
        client_port: clientPort,
        proxy_port: port,
        family: 4,
      });
      const value = encode(LAYOUTS.proxyOrigValue, {
        orig_ip: new Uint8Array([127, 0, 0, 1, ...new Array(12).fill(0)]),
        orig_port: ORIGIN_PORT,
        ep_id: server.id,
        src_identity: client.identity,
        dst_identity: server.identity,
        cookie: 77,
        dir: 1,
      });
      assert.equal(mapUpdate(origFd, key, value), 0);
    };
    const twoRequests = "GET /public HTTP/1.1\r\nHost: s\r\n\r\n" +
      "GET /private HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n";

    await t.step("an allowed request is forwarded, a denied one gets 403", async () => {
      redirect(27601);
      const out = await exchange(port, 27601, twoRequests);
      assert.match(out, /^HTTP\/1\.1 200 [^]*path=\/public\n/);
      assert.match(out, /HTTP\/1\.1 403 Forbidden[^]*Access denied\r\n$/);
      // The upstream leg's proxy-NAT entry carries the client's address and identity.
      let nat: Uint8Array | undefined;
      for (let p = UPSTREAM[0]; p <= UPSTREAM[1] && !nat; p++) {
        nat = mapLookup(
          natFd,
          encode(LAYOUTS.proxyNatKey, {
            server_ip: new Uint8Array([127, 0, 0, 1, ...new Array(12).fill(0)]),
            server_port: ORIGIN_PORT,
            local_port: p,
            family: 4,
          }),
          LAYOUTS.proxyNatValue.size,
        );
      }
      assert.ok(nat, "a proxy-NAT entry for the upstream leg");
      assert.deepEqual([...nat.subarray(0, 4)], [127, 0, 0, 1]);
      assert.equal(new DataView(nat.buffer).getUint32(16, true), client.identity);
    });

    await t.step("each request is a record with its verdict, rule and cookie", async () => {
      for (let i = 0; i < 50 && records.length < 2; i++) await sleep(10);
      assert.equal(records.length, 2, JSON.stringify(records));
      const [ok, denied] = records;
      assert.equal(ok!.url, "/public");
      assert.equal(ok!.code, 200);
      assert.equal(ok!.allowed, true);
      assert.ok(ok!.rule >= 0, `rule ${ok!.rule}`);
      assert.equal(ok!.epId, server.id);
      assert.equal(ok!.srcIdentity, client.identity);
      assert.deepEqual(ok!.client, { ip: "127.0.0.1", port: 27601 });
      assert.equal(denied!.url, "/private");
      assert.equal(denied!.code, 403);
      assert.equal(denied!.allowed, false);
      assert.equal(denied!.rule, -1);
    });

    await t.step("a cached verdict goes when the engine changes", async () => {
      load(["/private"]); // the same requests, the other verdicts
      redirect(27602);
      const out = await exchange(port, 27602, twoRequests);
      assert.match(out, /^HTTP\/1\.1 403 Forbidden/);
      // (/public denied and answered without closing: then /private passes, and its close ends it)
      assert.match(out, /HTTP\/1\.1 200 [^]*path=\/private\n$/);
    });

    await t.step("a connection the kernel did not redirect is closed unread", async () => {
      const out = await exchange(port, 27603, "GET /private HTTP/1.1\r\nHost: s\r\n\r\n")
        .catch((err: Error) => err.message);
      // (closed with the request unread: the kernel may answer the client with a reset)
      assert.ok(out === "" || /ECONNRESET/.test(out), `no answer: ${JSON.stringify(out)}`);
    });

    await t.step("a head that does not complete in time gets 408 (slowloris)", async () => {
      redirect(27607);
      const t0 = performance.now();
      const out = await exchange(port, 27607, "GET /public HTTP/1.1\r\nHost: s\r\n", 1);
      assert.match(out, /^HTTP\/1\.1 408 /);
      assert.ok(performance.now() - t0 >= 400, "not before the header timeout");
    });

    await t.step("an h2c connection is relayed to the event loop's h2 path", async () => {
      redirect(27604);
      const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
      // A SETTINGS frame (empty) after the preface: the h2 server answers with its own SETTINGS.
      const settings = "\x00\x00\x00\x04\x00\x00\x00\x00\x00";
      const out = await exchange(port, 27604, preface + settings, 9);
      assert.ok(out.length >= 9, "an HTTP/2 answer");
      assert.equal(out.charCodeAt(3), 4, "a SETTINGS frame");
    });

    await t.step(
      "a Worker that fails closes its connections and listeners, then serves again",
      async () => {
        redirect(27605);
        const s = net.connect({ host: "127.0.0.1", port, localPort: 27605 });
        const first = new Promise<string>((resolve) => s.once("data", (d) => resolve(String(d))));
        const closed = new Promise<void>((resolve) => s.once("close", () => resolve()));
        s.on("error", () => {});
        s.write("GET /private HTTP/1.1\r\nHost: s\r\n\r\n"); // (allowed now, keep-alive)
        assert.match(await first, /^HTTP\/1\.1 200/);
        const before = records.length;
        proxy!.httpWorker!.fail("injected by the test");
        await closed; // the Worker's client connection is cut, not left to hang
        const refused = await exchange(port, 27606, "GET /private HTTP/1.1\r\n\r\n").then(
          (out) => out,
          (err: Error) => err.message,
        );
        assert.match(
          refused,
          /ECONNREFUSED/,
          "the listener is closed (the kernel would drop: 178)",
        );
        let out = "";
        // (Under `deno test` each new Worker is type-checked first: that takes seconds.)
        for (let i = 0; i < 250 && !out.startsWith("HTTP/1.1 403"); i++) {
          await sleep(100);
          redirect(27610 + i);
          out = await exchange(port, 27610 + i, twoRequests).catch(() => "");
        }
        assert.match(out, /^HTTP\/1\.1 403[^]*HTTP\/1\.1 200/, "a new Worker on the same port");
        for (let i = 0; i < 50 && records.length <= before; i++) await sleep(20);
        assert.ok(records.length > before, "the new Worker's records come back");
      },
    );
  } finally {
    await proxy?.close();
    for (const c of closers) c();
    engine.close();
    release();
    await origin.shutdown();
    await run("umount", [bpffs]).catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

const kv = (key: number, value: number) => [
  "key",
  String(key),
  "value",
  String(value),
  "entries",
  "1024",
];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
