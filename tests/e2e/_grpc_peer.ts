// A test fixture: a gRPC server or client with npm @grpc/grpc-js (no .proto: the messages are raw
// bytes), for tests/e2e/l7_grpc_test.ts to run inside pods.
//   _grpc_peer.ts server PORT               serves pkg.Greeter/{SayHello,Delete}, answering
//                                           "remote=<peer>" (the address the server saw)
//   _grpc_peer.ts call HOST:PORT METHOD     one unary call; prints {"code", "details", "body"}
import grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";

const raw = (path: string) => ({
  path,
  requestStream: false,
  responseStream: false,
  requestSerialize: (b: Buffer) => b,
  requestDeserialize: (b: Buffer) => b,
  responseSerialize: (b: Buffer) => b,
  responseDeserialize: (b: Buffer) => b,
});
const SERVICE = {
  SayHello: raw("/pkg.Greeter/SayHello"),
  Delete: raw("/pkg.Greeter/Delete"),
} as unknown as grpc.ServiceDefinition;

const [mode, arg, method] = Deno.args;
if (mode === "server") {
  const server = new grpc.Server();
  const answer = (
    call: grpc.ServerUnaryCall<Buffer, Buffer>,
    cb: grpc.sendUnaryData<Buffer>,
  ) => cb(null, Buffer.from(`remote=${call.getPeer()}`));
  server.addService(SERVICE, { SayHello: answer, Delete: answer });
  server.bindAsync(`0.0.0.0:${arg}`, grpc.ServerCredentials.createInsecure(), (err) => {
    if (err) throw err;
  });
} else {
  const Client = grpc.makeGenericClientConstructor(SERVICE, "Greeter");
  const client = new Client(arg!, grpc.credentials.createInsecure()) as unknown as Record<
    string,
    (
      req: Buffer,
      opts: grpc.CallOptions,
      cb: (e: grpc.ServiceError | null, r?: Buffer) => void,
    ) => void
  >;
  // Generous: both methods answer (Delete with PERMISSION_DENIED), a loaded machine slowly.
  client[method!]!.call(client, Buffer.alloc(0), { deadline: Date.now() + 10_000 }, (err, res) => {
    console.log(JSON.stringify({
      code: err ? err.code : 0,
      details: err ? err.details : "",
      body: res ? res.toString() : "",
    }));
    Deno.exit(0);
  });
}
