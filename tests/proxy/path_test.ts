// The proxy's path normalisation: what the engine judges is what the server is sent.
import assert from "node:assert/strict";
import { normalisePath, PathError } from "../../agent/proxy/path.ts";

Deno.test("normalisePath() decodes, merges and removes dot segments like Envoy", async (t) => {
  const cases: [string, string][] = [
    ["/public", "/public"],
    ["/public/../private", "/private"],
    ["/public/%2e%2e/private", "/private"],
    ["/public/%2E%2E/private", "/private"],
    ["//private", "/private"],
    ["/public%2F..%2Fprivate", "/private"],
    ["/a/./b/", "/a/b/"],
    ["/a/b/..", "/a/"],
    ["/../../x", "/x"],
    ["/%7euser", "/~user"],
    ["/a%20b", "/a%20b"],
    ["/a%3fb", "/a%3Fb"],
    ["/public?x=/../y", "/public?x=/../y"],
  ];
  for (const [input, want] of cases) {
    await t.step(input, () => assert.deepEqual(normalisePath(input), want));
  }
});

Deno.test("normalisePath() refuses bad escapes, characters and targets", async (t) => {
  for (const bad of ["/a%zz", "/a%2", "/a%00b", "/a b", "/a\\b", "/a#frag", "http://x/a", "*"]) {
    await t.step(JSON.stringify(bad), () => {
      assert.throws(() => normalisePath(bad), PathError);
    });
  }
});
