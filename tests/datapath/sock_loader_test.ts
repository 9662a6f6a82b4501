// The socket LB's cgroup checks (agent/datapath/sock_loader.ts): --cgroup-root must be a cgroup v2
// directory, and the error names the path and what it is on. Needs no root (stat only).
import assert from "node:assert/strict";
import { checkCgroup2, defaultCgroupRoot } from "../../agent/datapath/sock_loader.ts";

Deno.test("sock LB: --cgroup-root that is not cgroup2 is refused naming the path", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-sock-" });
  try {
    await assert.rejects(
      checkCgroup2(dir),
      new RegExp(`Invalid --cgroup-root "${dir}": it is on "[^"]+", not cgroup2`),
    );
    await assert.rejects(
      checkCgroup2(`${dir}/missing`),
      new RegExp(`Invalid --cgroup-root "${dir}/missing": .*No such file`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sock LB: the default cgroup root is a cgroup2 mount and passes the check", async () => {
  const mounts = await Deno.readTextFile("/proc/self/mountinfo");
  if (!mounts.includes(" - cgroup2 ")) {
    await assert.rejects(defaultCgroupRoot(), /no cgroup2 mount in this mount namespace/);
    return;
  }
  const root = await defaultCgroupRoot();
  await checkCgroup2(root);
});
