// The policy simulator in a real Chromium (playwright-core): editing a policy changes the
// matrix; an invalid policy is marked at its line; the page's verdicts and explanations equal
// runScenario()/explainFlow() run directly in Deno for the tutorials and every example scenario,
// and what `cilia policy trace` prints;
// share links, export and import round-trip; the L7 tester judges HTTP and Kafka requests; no
// request leaves the page's origin. Screenshots of the main screens go to $CILIA_SCREENSHOTS.

import type { Page } from "playwright-core";
import {
  decodeBase64,
  encodeBase64Url,
  evaluateFlow,
  explainFlow,
  type FlowInput,
  type LoadedScenario,
  loadScenario,
  PolicyEngine,
  prepareScenario,
  runScenario,
  type Scenario,
} from "../../policy-wasm/mod.ts";
import { TUTORIALS } from "../../web/tutorials.ts";
import { assert, assertEquals, exampleScenarios } from "./_assert.ts";
import { CHROMIUM, matrixVerdicts, queryVerdicts, startSimulator } from "./_fixture.ts";
import { needs } from "../helpers/root.ts";

const engine = await PolicyEngine.create();

// Screenshots for review go to .cache/screenshots/ (git-ignored, overwritten by every run).
const shots = Deno.env.get("CILIA_SCREENSHOTS") ??
  new URL("../../.cache/screenshots/", import.meta.url).pathname;
await Deno.mkdir(shots, { recursive: true });
console.log(`screenshots: ${shots}`);

function tutorial(id: string): LoadedScenario {
  const t = TUTORIALS.find((t) => t.id === id)!;
  return loadScenario(JSON.stringify(t.scenario), `tutorial ${id}`);
}

function shareHashOf(s: Scenario): string {
  return `#scenario=${encodeBase64Url(new TextEncoder().encode(JSON.stringify(s)))}`;
}

function scenarioOfLink(link: string): Scenario {
  const b64 = /#scenario=([\w-]+)/.exec(link)?.[1];
  assert(b64, `Expected a share link, got "${link}"`);
  return JSON.parse(new TextDecoder().decode(decodeBase64(b64)));
}

/** explainFlow() in Deno for a flow of a scenario. */
function trace(loaded: LoadedScenario, flow: FlowInput): string {
  const { cluster } = prepareScenario(engine, loaded);
  return explainFlow(engine, evaluateFlow(cluster, engine, flow)).join("\n");
}

/** Types into CodeMirror: cursor to the end of the line containing `text`, delete, type. */
async function editLine(
  page: Page,
  text: string,
  o: { left?: number; erase?: number; type?: string },
): Promise<void> {
  await page.locator(".cm-line", { hasText: text }).first().click();
  await page.keyboard.press("End");
  for (let i = 0; i < (o.left ?? 0); i++) await page.keyboard.press("ArrowLeft");
  for (let i = 0; i < (o.erase ?? 0); i++) await page.keyboard.press("Backspace");
  if (o.type) await page.keyboard.type(o.type);
}

/** 1-based line of the editor that contains `text`. */
async function editorLine(page: Page, text: string): Promise<number> {
  const lines = await page.$$eval(".cm-content .cm-line", (ls) => ls.map((l) => l.textContent));
  return lines.findIndex((l) => l?.includes(text)) + 1;
}

function cell(page: Page, from: string, to: string, verdict?: string) {
  const v = verdict ? `[data-verdict="${verdict}"]` : "";
  return page.locator(`[data-testid=matrix-cell][data-from="${from}"][data-to="${to}"]${v}`);
}

/** What `cilia policy trace --scenario <s> …` prints. */
async function cliTrace(s: Scenario, args: string[]): Promise<string> {
  const file = await Deno.makeTempFile({ prefix: "cilia-web-", suffix: ".scenario.json" });
  try {
    await Deno.writeTextFile(file, JSON.stringify(s));
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "cli/main.ts", "policy", "trace", "--scenario", file, ...args],
      cwd: new URL("../../", import.meta.url),
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout).trimEnd();
    assert(out.success, `cilia policy trace failed: ${new TextDecoder().decode(out.stderr)}`);
    return text;
  } finally {
    await Deno.remove(file);
  }
}

async function shot(page: Page, name: string): Promise<void> {
  await page.mouse.move(0, 0);
  await page.screenshot({ path: `${shots}/${name}.png` });
}

Deno.test("policy simulator in Chromium", needs({ binaries: [CHROMIUM] }), async (t) => {
  const sim = await startSimulator();
  try {
    await t.step("typing in the editor changes the matrix", async () => {
      const page = await sim.open();
      await page.getByTestId("tab-matrix").click();
      await cell(page, "frontend", "backend", "allowed").waitFor();
      await cell(page, "monitoring", "backend", "denied").waitFor();
      await shot(page, "1-editor-and-matrix");
      const before = await page.evaluate(() => location.hash);
      await editLine(page, "app: frontend", { erase: "frontend".length, type: "monitoring" });
      await cell(page, "monitoring", "backend", "allowed").waitFor();
      await cell(page, "frontend", "backend", "denied").waitFor();
      const m = await matrixVerdicts(page);
      assertEquals(m["backend>frontend"], "allowed");
      // 3 endpoints, world and host: 5 × 5 minus the 2 × 2 pairs without an endpoint.
      assertEquals(Object.keys(m).length, 21);
      // The location hash follows the edit (debounced): it is the share link of the new text.
      await page.waitForFunction((h) => location.hash !== h, before);
      const edited = scenarioOfLink(await page.evaluate(() => location.href));
      assert(String(edited.policies[0]).includes("app: monitoring"));
      await page.close();
    });

    await t.step("an invalid policy shows an error at its line", async () => {
      const page = await sim.open();
      await page.getByTestId("tab-matrix").click();
      const kindLine = await editorLine(page, "kind: CiliumNetworkPolicy");
      await editLine(page, "kind: CiliumNetworkPolicy", { type: "y" });
      const problem = page.locator("[data-testid=problem][data-severity=error]");
      await problem.waitFor();
      assertEquals(await problem.getAttribute("data-line"), String(kindLine));
      assert((await problem.textContent())?.includes('Unsupported kind "CiliumNetworkPolicyy"'));
      const marked = page.locator(
        `.cm-content .cm-line:nth-child(${kindLine}) .cm-lintRange-error`,
      );
      await marked.waitFor();
      assertEquals(await page.locator(".cm-lintRange-error").count(), 1);
      assertEquals(await page.locator("#app").getAttribute("data-state"), "invalid");
      assertEquals(await page.getByTestId("matrix-cell").count(), 0);
      await shot(page, "5-invalid-policy");

      await editLine(page, "kind: CiliumNetworkPolicyy", { erase: 1 });
      const portLine = await editorLine(page, 'port: "80"');
      await editLine(page, 'port: "80"', { left: 1, erase: 2, type: "99999" });
      await page.locator(`[data-testid=problem][data-line="${portLine}"]`).waitFor();
      assert((await problem.textContent())?.includes("Invalid port 99999"));
      await page.locator(`.cm-content .cm-line:nth-child(${portLine}) .cm-lintRange-error`)
        .waitFor();
      await page.close();
    });

    await t.step("verdicts and explanations equal runScenario() in Deno", async (t) => {
      const all = [
        ...TUTORIALS.map((tu) => ({ name: `tutorial ${tu.id}`, loaded: tutorial(tu.id) })),
        ...(await exampleScenarios()),
      ];
      for (const { name, loaded } of all) {
        await t.step(name, async () => {
          const report = runScenario(engine, loaded);
          const page = await sim.open(shareHashOf(loaded.scenario));
          const rows = page.getByTestId("query-result");
          await rows.nth(report.results.length - 1).waitFor();
          assertEquals(await rows.count(), report.results.length);
          assertEquals(await queryVerdicts(page), report.results.map((r) => r.verdict));
          for (let i = 0; i < report.results.length; i++) await rows.nth(i).click();
          const traces = await page.$$eval(
            "tr.query-detail [data-testid=trace]",
            (els) => els.map((e) => e.textContent),
          );
          assertEquals(traces, report.results.map((r) => r.trace.join("\n")));
          await page.close();
        });
      }
    });

    await t.step("a matrix cell explains itself with explainFlow()'s lines", async () => {
      const page = await sim.open("#tutorial=http-get-public");
      await page.getByTestId("tab-matrix").click();
      await cell(page, "frontend", "backend").click();
      const pre = page.locator(".matrix-detail [data-testid=trace]");
      const expected = trace(tutorial("http-get-public"), {
        from: "default/frontend",
        to: "default/backend",
        port: 80,
        protocol: "TCP",
      });
      assertEquals(await pre.textContent(), expected);
      const cli = ["--src-endpoint", "frontend", "--dst-endpoint", "backend", "--dport", "80/TCP"];
      assertEquals(await cliTrace(tutorial("http-get-public").scenario, cli), expected);
      await page.locator(".matrix-detail").scrollIntoViewIfNeeded();
      await shot(page, "2-explanation");
      await cell(page, "monitoring", "backend").click();
      assert((await pre.textContent())?.endsWith("Final verdict: DENIED"));
      await page.close();
    });

    await t.step("the L7 tester judges HTTP and Kafka requests", async () => {
      const page = await sim.open("#tutorial=http-token-header");
      await page.getByTestId("tab-l7").click();
      await page.getByTestId("l7-from").selectOption("client");
      await page.getByTestId("l7-to").selectOption("api");
      await page.getByTestId("l7-port").fill("8080");
      await page.getByTestId("l7-path").fill("/v1/orders");
      const result = page.locator("[data-testid=l7-result] [data-testid=explanation]");
      const http = (value: string): FlowInput => ({
        from: "client",
        to: "api",
        port: 8080,
        protocol: "TCP",
        http: { method: "GET", path: "/v1/orders", headers: { "X-Token": value } },
      });
      await page.getByTestId("l7-headers").fill("X-Token: 42");
      await page.locator("[data-testid=l7-result] [data-verdict=allowed]").first().waitFor();
      assertEquals(
        await result.locator("[data-testid=trace]").textContent(),
        trace(tutorial("http-token-header"), http("42")),
      );
      await page.getByTestId("l7-headers").fill("X-Token: abc");
      await page.locator("[data-testid=l7-result] [data-verdict=denied]").first().waitFor();
      assertEquals(
        await result.locator("[data-testid=trace]").textContent(),
        trace(tutorial("http-token-header"), http("abc")),
      );
      await shot(page, "3-l7-tester");
      const cli = await cliTrace(tutorial("http-token-header").scenario, [
        ...["--src-endpoint", "client", "--dst-endpoint", "api", "--dport", "8080/TCP"],
        ...["--http-method", "GET", "--http-path", "/v1/orders", "--http-header", "X-Token: abc"],
      ]);
      assertEquals(await result.locator("[data-testid=trace]").textContent(), cli);

      await page.getByTestId("tutorial-select").selectOption("kafka-produce-consume");
      await page.getByTestId("tab-l7").click();
      await page.locator("[data-testid=l7-kind] [data-kind=kafka]").click();
      await page.getByTestId("l7-from").selectOption("service1");
      await page.getByTestId("l7-to").selectOption("kafka");
      await page.getByTestId("l7-port").fill("9092");
      await page.getByTestId("l7-apikey").selectOption("produce");
      await page.getByTestId("l7-topics").fill("topic1");
      await page.locator("[data-testid=l7-result] [data-verdict=allowed]").first().waitFor();
      await page.getByTestId("l7-from").selectOption("service2");
      await page.locator("[data-testid=l7-result] [data-verdict=denied]").first().waitFor();
      await page.close();
    });

    await t.step("a share link round-trips; export and import keep the format", async () => {
      const page = await sim.open();
      await page.getByTestId("tutorial-select").selectOption("kafka-produce-consume");
      await page.getByTestId("query-result").first().waitFor();
      await shot(page, "4-tutorial");
      await page.locator("#add-endpoint").click();
      const added = page.locator("[data-testid=endpoint-row]").last();
      await added.locator("[data-field=labels]").fill("app=service2");
      await page.getByTestId("tab-matrix").click();
      await cell(page, "pod-5", "kafka", "allowed").waitFor();
      await page.getByTestId("copy-link").click();
      const link = await page.getByTestId("share-link").inputValue();
      await shot(page, "6-share-link");
      const shared = scenarioOfLink(link);
      assertEquals(shared.endpoints.at(-1)?.labels, { app: "service2" });

      const again = await sim.open(link.slice(link.indexOf("#")));
      await again.getByTestId("copy-link").click();
      assertEquals(await again.getByTestId("share-link").inputValue(), link);
      await again.getByTestId("tab-matrix").click();
      assertEquals(await matrixVerdicts(again), await matrixVerdicts(page));
      assertEquals(await queryVerdicts(again), await queryVerdicts(page));
      const report = runScenario(engine, loadScenario(JSON.stringify(shared)));
      assertEquals(await queryVerdicts(again), report.results.map((r) => r.verdict));

      const [download] = await Promise.all([
        again.waitForEvent("download"),
        again.locator("#export-button").click(),
      ]);
      const file = await download.path();
      const exported = loadScenario(await Deno.readTextFile(file), download.suggestedFilename());
      assertEquals(exported.scenario, loadScenario(JSON.stringify(shared)).scenario);
      assert(download.suggestedFilename().endsWith(".scenario.yaml"));

      const examples = await exampleScenarios();
      const example = examples[0]!;
      await again.locator("#import-file").setInputFiles(
        new URL(`../../${example.loaded.file}`, import.meta.url).pathname,
      );
      await again.getByTestId("query-result").nth(example.loaded.scenario.queries.length - 1)
        .waitFor();
      assertEquals(
        await again.locator("#scenario-name").inputValue(),
        example.loaded.scenario.name ?? "",
      );
      assertEquals(
        await queryVerdicts(again),
        runScenario(engine, example.loaded).results.map((r) => r.verdict),
      );
      await again.close();
      await page.close();
    });

    await t.step("the footgun tutorials show their lint warnings", async () => {
      const page = await sim.open("#tutorial=footgun-or-split");
      await page.getByTestId("tab-matrix").click();
      const warning = page.locator("[data-testid=problem][data-severity=warning]");
      await warning.first().waitFor();
      const line = await editorLine(page, "- toPorts:");
      assertEquals(await warning.first().getAttribute("data-line"), String(line));
      await cell(page, "intruder", "api-split", "allowed").waitFor();
      await cell(page, "intruder", "api-fixed", "denied").waitFor();
      await shot(page, "7-footgun-or-split");
      await page.close();
    });

    assertEquals(sim.foreignRequests, []);
    assertEquals(sim.pageErrors, []);
  } finally {
    await sim.close();
  }
});
