// The L7 proxy's listener ports across restarts (issue #10): the kernel's policy entries name a
// listener's port, so a restarted proxy must listen for each (endpoint, direction, ports) on the
// port it had, whatever order the listeners come back in, and must not give a port that an
// earlier run's listener still owns to another one. A port range gets one listener.
import assert from "node:assert/strict";
import { PolicyEngine } from "@cilia/policy-wasm";
import { L7Proxy } from "../../agent/proxy/proxy.ts";
import { Metrics } from "../../agent/metrics.ts";
import { SILENT } from "../../agent/log.ts";

const tick = () => new Promise((r) => setTimeout(r, 20));

Deno.test("L7Proxy keeps listener ports across restarts in its ports file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-proxy-ports-" });
  const engine = await PolicyEngine.create();
  const open = () =>
    new L7Proxy({
      engine,
      maps: undefined,
      log: SILENT,
      metrics: new Metrics(),
      basePort: 25101,
      portsFile: `${dir}/proxy-ports.json`,
    });
  try {
    const first = open();
    const a = await first.listen(1, "ingress", 8080);
    const b = await first.listen(2, "egress", 8080);
    const range = await first.listen(3, "ingress", [8080, 8081]);
    assert.equal(await first.listen(3, "ingress", [8080, 8081]), range, "one listener a range");
    first.close();
    await tick(); // a listener's socket goes once its pending accept is cancelled

    const second = open(); // listeners come back in another order
    assert.equal(await second.listen(3, "ingress", [8080, 8081]), range);
    const c = await second.listen(4, "ingress", 9090); // new: none of the earlier ports
    assert.ok(![a, b, range].includes(c), `new listener took an earlier port: ${c}`);
    assert.equal(await second.listen(2, "egress", 8080), b);
    assert.equal(await second.listen(1, "ingress", 8080), a);
    second.closeEndpoint(1); // gone: its port is free again
    second.close();
    await tick();
    const saved = JSON.parse(await Deno.readTextFile(`${dir}/proxy-ports.json`));
    assert.deepEqual(Object.keys(saved).sort(), [
      "2/egress/8080",
      "3/ingress/8080-8081",
      "4/ingress/9090",
    ]);

    const fourth = open(); // endpoint 2 did not come back: its port is forgotten
    fourth.retainEndpoints(new Set([3, 4]));
    fourth.close();
    const kept = JSON.parse(await Deno.readTextFile(`${dir}/proxy-ports.json`));
    assert.deepEqual(Object.keys(kept).sort(), ["3/ingress/8080-8081", "4/ingress/9090"]);

    await Deno.writeTextFile(`${dir}/proxy-ports.json`, "{not json");
    const third = open(); // an unreadable file: fresh ports, no crash
    assert.ok((await third.listen(1, "ingress", 8080)) >= 25101);
    third.close();
    await tick();
  } finally {
    engine.close?.();
    await Deno.remove(dir, { recursive: true });
  }
});
