// `cilia ui` (cli/ui.ts) in front of an in-process agent, and the simulator's live mode in
// Chromium: the access token is required on every request (401 without, constant-time compare),
// the bridge is read-only, live mode loads the agent's endpoints and policies read-only, the
// service map draws the observed workloads, replay in the browser lists what the CLI's
// replayTraffic() lists, and "Suggest from traffic" fills a draft whose tests pass.
// Screenshots: .cache/screenshots/ui-*.png (ui-live-flows.png: the live flow table).

import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { observeFlows, PolicyEngine, replayTraffic } from "@cilia/policy-wasm";
import { createUiHandler, newToken } from "../../cli/ui.ts";
import { endpointBody, startAgent, type TestAgent } from "../agent/_fixture.ts";
import { event, frame } from "../monitor/_events.ts";
import { builtSimulator, CHROMIUM, queryVerdicts } from "./_fixture.ts";

const root = new URL("../../", import.meta.url).pathname;
const SHOTS = Deno.env.get("CILIA_SCREENSHOTS") ?? `${root}.cache/screenshots`;
const THREE_TIER = await Deno.readTextFile(`${root}examples/policies/three-tier.yaml`);
const DRAFT = THREE_TIER.replace('port: "5432"', 'port: "5433"');
const IPS = { frontend: "10.200.0.11", backend: "10.200.0.12", db: "10.200.0.13" };

async function lab(): Promise<TestAgent> {
  const a = await startAgent();
  const ids: Record<string, { id: number; identity: number }> = {};
  let n = 10;
  for (const [name, ip] of Object.entries(IPS)) {
    const r = await a.call(
      "PUT",
      `/v1/endpoint/${++n}`,
      endpointBody(name, { app: name }, { ipv4: ip }),
    );
    assert.equal(r.status, 201, JSON.stringify(r.body));
    ids[name] = { id: n, identity: r.body.identity };
  }
  assert.equal((await a.call("PUT", "/v1/policy", THREE_TIER)).status, 200);
  // The frontend reaches the backend through a ClusterIP service (the live table's SERVICE column).
  const svc = await a.call("PUT", "/v1/service", {
    name: "default/backend",
    frontend: { ip: "10.96.0.10", port: 80, protocol: "TCP" },
    backends: [{ ip: IPS.backend, port: 8080 }],
  });
  assert.equal(svc.status, 201, JSON.stringify(svc.body));
  const svcId = (svc.body as { id: number }).id;
  const send = (from: string, to: string, dport: number, drop = 0) => {
    for (const direction of ["egress", "ingress"] as const) {
      const self = direction === "egress" ? from : to;
      const dropped = drop !== 0 && direction === "ingress";
      a.agent.monitor.ingest(event({
        type: dropped ? "drop" : "trace",
        subtype: dropped ? drop : 0,
        direction,
        epId: ids[self]!.id,
        srcIdentity: ids[from]!.identity,
        dstIdentity: ids[to]!.identity,
        dport,
        // At the client's veth, a packet to the backend's 8080 went through the service (lb.h).
        svcId: direction === "egress" && dport === 8080 ? svcId : 0,
        data: frame(IPS[from as keyof typeof IPS], IPS[to as keyof typeof IPS], {
          proto: 6,
          sport: 40000,
          dport,
          flags: 2,
        }),
      }));
    }
  };
  send("frontend", "backend", 8080);
  send("backend", "db", 5432);
  send("frontend", "backend", 9090, 133);
  return a;
}

Deno.test("cilia ui: token required, read-only bridge, live mode, service map, replay agrees with the CLI, suggest", async (t) => {
  const a = await lab();
  const token = newToken();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    createUiHandler({
      token,
      agent: (p, { accept }) => Promise.resolve(a.app.request(p, { headers: { accept } })),
      root: await builtSimulator(),
    }),
  );
  const origin = `http://127.0.0.1:${server.addr.port}`;
  const userDataDir = await Deno.makeTempDir({ prefix: "cilia-chromium-" });
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic"],
    viewport: { width: 1440, height: 1000 },
  });
  await Deno.mkdir(SHOTS, { recursive: true });
  try {
    await t.step("the token is required on every request; the bridge only reads", async () => {
      const get = (path: string, init: RequestInit = {}) =>
        fetch(origin + path, init).then(async (r) => ({ status: r.status, body: await r.text() }));
      assert.equal((await get("/")).status, 401);
      assert.equal((await get("/app.js")).status, 401);
      assert.equal((await get("/api/v1/endpoint")).status, 401);
      assert.equal((await get(`/api/v1/endpoint?token=${token}x`)).status, 401);
      const bearer = { headers: { authorization: `Bearer ${token}` } };
      const eps = await get("/api/v1/endpoint", bearer);
      assert.equal(eps.status, 200);
      assert.equal(JSON.parse(eps.body).length, 3);
      assert.equal((await get("/api/v1/policy", { ...bearer, method: "DELETE" })).status, 405);
      assert.equal((await get("/api/v1/bpf/ct", bearer)).status, 404);
      assert.equal((await get("/api/v1/cni/add", bearer)).status, 404);
    });

    const page = await context.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    page.setDefaultTimeout(15_000);
    await page.goto(`${origin}/?token=${token}`);

    await t.step("live mode loads the agent's endpoints and policies, read-only", async () => {
      await page.waitForSelector("#app[data-runs='1'], .fatal").catch(() => {});
      assert.deepEqual(errors, []);
      await page.waitForFunction(() =>
        /3 endpoints · 3 policies/.test(
          document.querySelector("[data-testid=live-status]")?.textContent ?? "",
        )
      );
      assert.equal(await page.locator("#app").getAttribute("data-readonly"), "true");
      const editor = await page.locator(".cm-content").textContent();
      assert.match(editor ?? "", /name: backend/);
      await page.waitForSelector("[data-testid=service-map] [data-node='default/frontend']");
      const nodes = await page.$$eval(
        "[data-node]",
        (els) => els.map((e) => e.getAttribute("data-node")),
      );
      assert.deepEqual(nodes.sort(), ["default/backend", "default/db", "default/frontend"]);
      const edges = await page.$$eval(
        "[data-edge]",
        (els) => els.map((e) => e.getAttribute("data-edge")),
      );
      assert.deepEqual(edges.sort(), [
        "default/backend -> default/db",
        "default/frontend -> default/backend",
      ]);
      assert.ok((await page.locator("[data-testid=live-flows] tbody tr").count()) >= 6);
      const heads = await page.$$eval(
        "[data-testid=live-flows] th",
        (els) => els.map((e) => e.textContent),
      );
      const col = heads.indexOf("SERVICE");
      assert.ok(col > 0, `a SERVICE column: ${heads}`);
      const cells = await page.$$eval(
        "[data-testid=live-flows] tbody tr",
        (trs, i) => trs.map((tr) => tr.children[i as number]?.textContent ?? ""),
        col,
      );
      assert.equal(
        cells.filter((c) => c === "default/backend 10.96.0.10:80/TCP").length,
        1,
        `one flow through the service (the frontend's egress to 8080): ${JSON.stringify(cells)}`,
      );
      await page.locator("[data-edge='default/frontend -> default/backend'] circle").click();
      await page.waitForSelector("[data-testid=live-edge] li");
      await page.screenshot({ path: `${SHOTS}/ui-live.png`, fullPage: true });
      await page.getByTestId("live-flows").screenshot({ path: `${SHOTS}/ui-live-flows.png` });
    });

    await t.step("replay in the browser lists what the CLI's replay lists", async () => {
      await page.getByTestId("live-fork").click();
      assert.equal(await page.locator("#app").getAttribute("data-readonly"), "false");
      const draftFile = `${userDataDir}/draft.yaml`;
      await Deno.writeTextFile(draftFile, DRAFT);
      await page.locator("#import-file").setInputFiles(draftFile);
      await page.getByTestId("tab-live").click();
      await page.getByTestId("live-replay-run").click();
      await page.waitForSelector("[data-testid=replay-summary]");
      const browser = await page.$$eval(
        "[data-change]",
        (rows) =>
          rows.map((
            r,
          ) => [r.getAttribute("data-change"), r.querySelector(".connection")?.textContent]),
      );
      const flows = await (await a.app.request("/v1/flows?last=2000")).text();
      const engine = await PolicyEngine.create();
      try {
        const cli = replayTraffic(engine, observeFlows(flows), [{ text: DRAFT }]);
        assert.deepEqual(browser, cli.changes.map((c) => [c.change, c.connection]));
        assert.deepEqual(browser, [["newly-denied", "default/backend -> default/db TCP/5432"]]);
      } finally {
        engine.close();
      }
      await page.screenshot({ path: `${SHOTS}/ui-replay.png`, fullPage: true });
    });

    await t.step("Suggest from traffic fills a draft whose tests pass", async () => {
      await page.getByTestId("live-suggest").click();
      await page.waitForFunction(() =>
        document.querySelectorAll("[data-testid=query-result]").length > 0
      );
      const verdicts = await queryVerdicts(page);
      assert.ok(verdicts.length >= 4);
      const failing = await page.locator(
        "[data-testid=query-result].fail, [data-testid=query-result][data-pass=false]",
      ).count();
      assert.equal(failing, 0);
      assert.match(await page.locator(".cm-content").textContent() ?? "", /backend-from-traffic/);
      await page.screenshot({ path: `${SHOTS}/ui-suggest.png`, fullPage: true });
    });
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    await server.shutdown();
    await a.close();
    await Deno.remove(userDataDir, { recursive: true }).catch(() => {});
  }
});
