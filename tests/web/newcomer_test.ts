// The simulator on the newcomer's path (issue 14), in a real Chromium: it works from a 1024 px
// laptop up and on a 390 px phone (no sideways page scroll, the Endpoints card not covered by the
// editor), with the keyboard alone (Tab leaves the editor unless Tab-indent is opted in; Enter on
// a matrix cell keeps focus; the problems list is reachable; focus is visible), "New" clears the
// scenario, and the bundle is served compressed with an ETag. Screenshots at 1024×768, 1440×900
// and 390×844 go to .cache/screenshots/ for review.

import { assert, assertEquals } from "./_assert.ts";
import { builtSimulator, CHROMIUM, startSimulator } from "./_fixture.ts";
import { serveSimulator } from "../../web/mod.ts";
import { needs } from "../helpers/root.ts";

const shots = Deno.env.get("CILIA_SCREENSHOTS") ??
  new URL("../../.cache/screenshots/", import.meta.url).pathname;
await Deno.mkdir(shots, { recursive: true });

const VIEWPORTS = [
  { name: "1024x768", width: 1024, height: 768 },
  { name: "1440x900", width: 1440, height: 900 },
  { name: "390x844", width: 390, height: 844 },
];

Deno.test(
  "simulator: laptop and phone layouts, keyboard, New",
  needs({
    binaries: [CHROMIUM],
  }),
  async (t) => {
    const sim = await startSimulator();
    try {
      for (const vp of VIEWPORTS) {
        await t.step(
          `${vp.name}: no sideways scroll; Endpoints visible and uncovered`,
          async () => {
            const page = await sim.open("#tutorial=kafka-produce-consume", vp);
            const overflow = await page.evaluate(() =>
              document.documentElement.scrollWidth - document.documentElement.clientWidth
            );
            assertEquals(overflow, 0, `page is ${overflow} px wider than the ${vp.name} viewport`);
            const editor = await page.locator(".editor-card").boundingBox();
            const endpoints = await page.locator("#endpoints-card").boundingBox();
            assert(editor && endpoints);
            const overlaps = endpoints.x < editor.x + editor.width &&
              editor.x < endpoints.x + endpoints.width &&
              endpoints.y < editor.y + editor.height && editor.y < endpoints.y + endpoints.height;
            assert(!overlaps, `Endpoints card overlaps the editor at ${vp.name}`);
            await page.locator("#endpoints-card").scrollIntoViewIfNeeded();
            assert(await page.locator("#endpoints-card").isVisible());
            await page.screenshot({ path: `${shots}newcomer-${vp.name}.png`, fullPage: true });
            await page.close();
          },
        );
      }

      await t.step("Tab leaves the editor by default; Tab-indent is an opt-in", async () => {
        const page = await sim.open("#tutorial=kafka-produce-consume", {
          width: 1024,
          height: 768,
        });
        await page.locator(".cm-content").click();
        const before = await page.locator(".cm-content").textContent();
        await page.keyboard.press("Tab");
        assertEquals(await page.locator(".cm-content").textContent(), before);
        const inEditor = await page.evaluate(() =>
          document.activeElement?.closest(".cm-editor") !== null
        );
        assert(!inEditor, "Tab kept the focus in the editor");
        await page.getByTestId("tab-indents").check();
        await page.locator(".cm-content").click();
        await page.keyboard.press("Tab");
        assert(
          (await page.locator(".cm-content").textContent())!.length > before!.length,
          "with the opt-in, Tab indents",
        );
        await page.close();
      });

      await t.step("Enter on a matrix cell keeps focus; the focus ring is visible", async () => {
        const page = await sim.open("#tutorial=kafka-produce-consume", {
          width: 1440,
          height: 900,
        });
        await page.getByTestId("tab-matrix").click();
        const cell = page.getByTestId("matrix-cell").nth(1);
        await cell.focus();
        await page.keyboard.press("Enter");
        const focused = await page.evaluate(() => ({
          testid: (document.activeElement as HTMLElement | null)?.dataset.testid,
          outline: getComputedStyle(document.activeElement!).outlineStyle,
        }));
        assertEquals(focused.testid, "matrix-cell");
        assert(focused.outline !== "none", "no visible focus on the matrix cell");
        await page.screenshot({ path: `${shots}newcomer-matrix-focus.png` });
        await page.close();
      });

      await t.step("the problems list is reachable by keyboard and jumps to the line", async () => {
        const page = await sim.open("#tutorial=footgun-or-split", { width: 1440, height: 900 });
        const problem = page.getByTestId("problem").first();
        await problem.waitFor();
        assertEquals(await problem.getAttribute("tabindex"), "0");
        await problem.focus();
        await page.keyboard.press("Enter");
        const inEditor = await page.evaluate(() =>
          document.activeElement?.closest(".cm-editor") !== null
        );
        assert(inEditor, "Enter on a problem did not move to the editor");
        await page.close();
      });

      await t.step("New clears title, notes, queries and the export name", async () => {
        const page = await sim.open("#tutorial=kafka-produce-consume", {
          width: 1440,
          height: 900,
        });
        assert(await page.getByTestId("notes").isVisible());
        await page.getByTestId("new-scenario").click();
        assertEquals(await page.locator("#scenario-name").inputValue(), "");
        assert(await page.getByTestId("notes").isHidden());
        assertEquals(await page.getByTestId("query-result").count(), 0);
        const download = page.waitForEvent("download");
        await page.locator("#export-button").click();
        assert(!(await download).suggestedFilename().includes("kafka"));
        await page.close();
      });
      assertEquals(sim.pageErrors, []);
    } finally {
      await sim.close();
    }
  },
);

Deno.test("serveSimulator(): gzip for text files, an ETag and 304 on revalidation", async () => {
  const root = await builtSimulator();
  const get = (headers: Record<string, string>) =>
    serveSimulator(new Request("http://x/app.js", { headers }), { root });
  const plain = await get({});
  const raw = (await plain.arrayBuffer()).byteLength;
  const gz = await get({ "accept-encoding": "gzip, br" });
  assertEquals(gz.headers.get("content-encoding"), "gzip");
  const compressed = (await gz.arrayBuffer()).byteLength;
  assert(compressed < raw / 2, `gzip saved too little: ${compressed} of ${raw} bytes`);
  const etag = gz.headers.get("etag");
  assert(etag && etag !== plain.headers.get("etag"));
  const again = await get({ "accept-encoding": "gzip", "if-none-match": etag });
  assertEquals(again.status, 304);
  await again.body?.cancel();
});
