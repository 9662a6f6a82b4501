// BpfToolError carries argv, exit code, a verifier summary and a hint for known failures.
import { BpfTool, BpfToolError } from "../../agent/datapath/bpftool.ts";
import { checkBpffs } from "../../agent/datapath/loader.ts";
import { Lab } from "../helpers/netns.ts";
import { assert, assertEquals } from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const BAD = `#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("tc")
int bad(struct __sk_buff *skb)
{
	return *(__u8 *)(long)skb->data; /* no bounds check: the verifier must refuse */
}
char LICENSE[] SEC("license") = "GPL";
`;

async function rejects(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error("expected a rejection");
}

Deno.test("BpfToolError explains a verifier rejection", needsRoot(), async () => {
  await using lab = await Lab.create();
  const node = await lab.addNode("node");
  const src = `${lab.dir}/bad.c`, obj = `${lab.dir}/bad.o`;
  await Deno.writeTextFile(src, BAD);
  const cc = await new Deno.Command("clang", {
    args: ["-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", src, "-o", obj],
  }).output();
  assertEquals(cc.code, 0);
  const e = await rejects(
    new BpfTool().run(["prog", "loadall", obj, `${node.bpffs}/bad`], "Cannot load"),
  );
  assert(e instanceof BpfToolError, "a BpfToolError");
  assertEquals([e.argv[0], e.argv[1], e.exitCode !== 0], ["bpftool", "prog", true]);
  assert(/invalid access to packet|R\d/.test(e.summary), `summary names the failure: ${e.summary}`);
  assert(e.log.length > e.summary.length, "the full log is kept");
  assert(e.hint?.includes("verifier"), `verifier hint: ${e.hint}`);
});

Deno.test("checkBpffs() refuses a directory that is not a bpffs and says how to mount one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-notbpf-" });
  try {
    const e = await rejects(checkBpffs(dir));
    assert(e instanceof Error && /not a bpffs/.test(e.message) && /mount -t bpf/.test(e.message));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
