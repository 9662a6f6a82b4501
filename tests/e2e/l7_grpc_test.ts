// gRPC (h2c with prior knowledge) through the kernel redirect and the agent's proxy: an ingress
// rule on a server pod allows `POST /pkg.Greeter/SayHello` only. The client is
// `curl --http2-prior-knowledge` with a gRPC frame (curl shows the trailers as they are on the
// wire) against a node:http2 h2c server (Deno) that answers every call with a gRPC message and
// `grpc-status: 0` in its trailers, and npm @grpc/grpc-js as client and server (_grpc_peer.ts);
// both servers, in the server pod, say which address they saw. An allowed call passes with the client pod's IP; a denied method ends with
// `grpc-status: 7` (PERMISSION_DENIED) on a well-formed stream; a non-gRPC request gets 403; each
// call is an L7 flow and counted as protocol "grpc". Needs root.
import assert from "node:assert/strict";
import { CiliaNode } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const PORT = 50051;
/** The @grpc/grpc-js server (tests/e2e/_grpc_peer.ts). */
const GRPC_JS_PORT = 50061; // not adjacent: a port range with L7 rules has no proxy yet
const PEER = new URL("./_grpc_peer.ts", import.meta.url).pathname;
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;

const SERVER = `
import http2 from "node:http2";
const server = http2.createServer();
server.on("stream", (stream, headers) => {
  const remote = stream.session?.socket?.remoteAddress ?? "";
  stream.on("data", () => {});
  stream.on("end", () => {
    const msg = new TextEncoder().encode(\`remote=\${remote} path=\${headers[":path"]}\`);
    const frame = new Uint8Array(5 + msg.length);
    new DataView(frame.buffer).setUint32(1, msg.length);
    frame.set(msg, 5);
    stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    stream.end(frame);
  });
});
server.listen(Number(Deno.args[0]), "0.0.0.0");
`;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-grpc, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "${PORT}", protocol: TCP}, {port: "${GRPC_JS_PORT}", protocol: TCP}]
      rules:
        http:
        - {method: POST, path: /pkg.Greeter/SayHello}
`;

interface Call {
  ok: boolean;
  status: number;
  /** Response headers and trailers, lower-cased names. */
  fields: Record<string, string>;
  body: string;
}

// Once per way the agent serves HTTP redirects (--l7-http-io): with the Worker, an h2c
// connection is relayed to the event loop's h2 path.
for (const io of ["event-loop", "worker"]) {
  Deno.test({
    name: `l7 grpc (${io}): per-method rules over h2c, a denied call ends with grpc-status 7`,
    ...needsRoot(["curl"]),
    sanitizeResources: false,
    sanitizeOps: false,
  }, (t) => l7GrpcTest(t, io));
}

async function l7GrpcTest(t: Deno.TestContext, io: string): Promise<void> {
  await using n = await CiliaNode.create({ agentArgs: ["--l7-http-io", io] });
  const client = await n.addPod("client", { app: "client" });
  const server = await n.addPod("server", { app: "server" });
  await Deno.writeTextFile(`${n.lab.dir}/server.ts`, SERVER);
  await Deno.writeFile(`${n.lab.dir}/req.bin`, new Uint8Array([0, 0, 0, 0, 0])); // empty message
  n.lab.spawn([
    "ip",
    "netns",
    "exec",
    server.netns,
    Deno.execPath(),
    "run",
    "-A",
    "--no-config",
    `${n.lab.dir}/server.ts`,
    String(PORT),
  ]);
  n.lab.spawn([
    "ip",
    "netns",
    "exec",
    server.netns,
    Deno.execPath(),
    "run",
    "-A",
    "--config",
    CONFIG,
    PEER,
    "server",
    String(GRPC_JS_PORT),
  ]);
  const grpcJs = async (method: string) => {
    const out = await n.lab.run(client.netns, [
      Deno.execPath(),
      "run",
      "-A",
      "--config",
      CONFIG,
      PEER,
      "call",
      `${server.ipv4}:${GRPC_JS_PORT}`,
      method,
    ]);
    return JSON.parse(out) as { code: number; details: string; body: string };
  };
  const call = async (path: string, grpc = true): Promise<Call> => {
    const r = await n.lab.exec(client.netns, [
      "curl",
      "-s",
      "-v",
      "-m",
      "10", // every call gets an answer (a denied one too): generous for a loaded machine
      "--http2-prior-knowledge",
      ...(grpc
        ? [
          "-X",
          "POST",
          "-H",
          "content-type: application/grpc",
          "-H",
          "te: trailers",
          "--data-binary",
          `@${n.lab.dir}/req.bin`,
        ]
        : []),
      `http://${server.ipv4}:${PORT}${path}`,
    ]);
    const fields: Record<string, string> = {};
    let status = 0;
    for (const line of r.stderr.split("\n")) {
      const m = /^< ([^:\s]+):\s*(.*?)\r?$/.exec(line);
      if (m) fields[m[1]!.toLowerCase()] = m[2]!;
      const s = /^< HTTP\/2 (\d{3})/.exec(line);
      if (s) status = Number(s[1]);
    }
    return { ok: r.code === 0, status, fields, body: r.stdout };
  };
  for (
    let i = 0;
    i < 50 && (await call("/pkg.Greeter/SayHello")).fields["grpc-status"] !== "0";
    i++
  ) {
    await new Promise((r) => setTimeout(r, 100));
  }

  await t.step("an allowed method passes and the server sees the client pod's IP", async () => {
    await n.policy(POLICY);
    const r = await call("/pkg.Greeter/SayHello");
    assert.ok(r.ok, `curl failed: ${JSON.stringify(r)}`);
    assert.equal(r.status, 200);
    assert.equal(r.fields["grpc-status"], "0", JSON.stringify(r.fields));
    assert.match(r.body, new RegExp(`remote=(::ffff:)?${client.ipv4.replaceAll(".", "\\.")} `));
  });

  await t.step("a denied method ends with grpc-status 7, not a broken stream", async () => {
    const r = await call("/pkg.Greeter/Delete");
    assert.ok(r.ok, `curl failed (a broken stream?): ${JSON.stringify(r)}`);
    assert.equal(r.status, 200);
    assert.equal(r.fields["grpc-status"], "7", JSON.stringify(r.fields));
    assert.equal(r.body, "");
  });

  await t.step("@grpc/grpc-js: SayHello passes, Delete fails with PERMISSION_DENIED", async () => {
    let ok = await grpcJs("SayHello");
    for (let i = 0; i < 30 && ok.code === 14; i++) { // UNAVAILABLE: the server is starting
      await new Promise((r) => setTimeout(r, 200));
      ok = await grpcJs("SayHello");
    }
    assert.equal(ok.code, 0, JSON.stringify(ok));
    assert.match(
      ok.body,
      new RegExp(`^remote=(ipv4:)?(::ffff:)?${client.ipv4.replaceAll(".", "\\.")}:`),
    );
    const denied = await grpcJs("Delete");
    assert.equal(denied.code, 7, JSON.stringify(denied));
    assert.equal(denied.details, "Access denied");
  });

  await t.step("a path trick is judged on the normalised path", async () => {
    const r = await call("/pkg.Greeter/SayHello/../Delete");
    assert.equal(r.fields["grpc-status"], "7", JSON.stringify(r.fields));
  });

  await t.step("a plain HTTP/2 request to a denied path gets 403", async () => {
    const r = await call("/private", false);
    assert.equal(r.status, 403, JSON.stringify(r));
    assert.equal(r.body.trim(), "Access denied");
  });

  await t.step("each call is an L7 flow and counted as grpc", async () => {
    const { flows } = await n.flows({ type: "l7" });
    const d = flows.find((f) => f.l7?.http?.url === "/pkg.Greeter/Delete");
    assert.ok(d, `a flow for the denied call: ${JSON.stringify(flows.slice(-3))}`);
    assert.equal(d.verdict, "DROPPED");
    assert.equal(d.l7!.http!.protocol, "HTTP/2");
    assert.equal(d.IP?.source, client.ipv4);
    const m = await n.metrics();
    assert.match(m, /cilia_l7_requests_total\{protocol="grpc",verdict="denied"\} [1-9]/);
    assert.match(m, /cilia_l7_requests_total\{protocol="grpc",verdict="forwarded"\} [1-9]/);
  });
}
