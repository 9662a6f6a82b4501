// The API socket as a real agent process serves it (issue 18): created with mode 0600 (the umask
// is set while it is bound, so there is no window), and a client that goes away in the middle of
// its request body is a 400 for that client, not an agent failure: nothing is logged as an error
// and the agent keeps serving.

import assert from "node:assert/strict";
import { spawnAgent } from "./_fixture.ts";

Deno.test("API socket: mode 0600; an aborted request body is not an agent error", async () => {
  const agent = await spawnAgent({ node: "node-sock" });
  try {
    assert.equal((await Deno.stat(agent.socket)).mode! & 0o777, 0o600);
    for (let i = 0; i < 3; i++) {
      const conn = await Deno.connect({ transport: "unix", path: agent.socket });
      const head = "PUT /v1/policy HTTP/1.1\r\nHost: cilia\r\ncontent-type: application/yaml\r\n" +
        "content-length: 100000\r\n\r\napiVersion: cilium.io/v2\n";
      await conn.write(new TextEncoder().encode(head));
      await new Promise((r) => setTimeout(r, 50));
      conn.close();
    }
    await new Promise((r) => setTimeout(r, 200));
    const status = await agent.api.call("GET", "/v1/status");
    assert.equal(status.status, 200, "the agent keeps serving");
    const errors = agent.log().split("\n").filter((l) => l.includes('"level":"error"'));
    assert.deepEqual(errors, [], "an aborted body is not logged as an agent error");
    const metrics = (await agent.api.call("GET", "/v1/metrics")).body as string;
    assert.doesNotMatch(metrics, /cilia_api_requests_total\{code="500"/);
  } finally {
    await agent.stop();
  }
});
