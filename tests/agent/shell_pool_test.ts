// The agent's command shells (agent/sys/_shell_pool.ts through execCommand): argv runs exactly
// (quotes, spaces, "$" and newlines are not interpreted), standard input, output, error and the
// exit status come back as with a spawn, a missing program is NotFound, a shell killed under a
// command fails that command only, and commands beyond the pool's shells still run; the output
// directories that killed agents left behind are removed by the next pool.
import assert from "node:assert/strict";
import { execCommand, useShellPool } from "../../agent/sys/exec.ts";
import { scratch } from "../../agent/sys/_shell_pool.ts";

Deno.test("execCommand() through the shell pool behaves like a spawn", async (t) => {
  const pool = await useShellPool(2);
  try {
    await t.step("argv words are passed as they are", async () => {
      const words = ["it's", "a b", "$HOME", "`id`", "x\ny", "*", ""];
      const r = await execCommand(["printf", "%s|", ...words]);
      assert.deepEqual([r.code, r.stdout], [0, words.map((w) => `${w}|`).join("")]);
    });
    await t.step("stdin, stdout, stderr and the exit status", async () => {
      const r = await execCommand(["sh", "-c", "cat; echo oops >&2; exit 3"], { stdin: "in\n" });
      assert.deepEqual([r.code, r.stdout, r.stderr], [3, "in\n", "oops\n"]);
      const none = await execCommand(["cat"]);
      assert.deepEqual([none.code, none.stdout], [0, ""], "no stdin: /dev/null");
    });
    await t.step("a missing program is NotFound", async () => {
      await assert.rejects(() => execCommand(["cilia-no-such-program"]), Deno.errors.NotFound);
    });
    await t.step("more commands at once than shells", async () => {
      const rs = await Promise.all(
        Array.from({ length: 6 }, (_, i) => execCommand(["sh", "-c", `sleep 0.1; echo ${i}`])),
      );
      assert.deepEqual(rs.map((r) => r.stdout.trim()), ["0", "1", "2", "3", "4", "5"]);
    });
    await t.step("a shell killed under a command fails it; the next one runs", async () => {
      const r = execCommand(["sh", "-c", "kill -9 $PPID; sleep 5"]);
      await assert.rejects(() => r, /shell exited/);
      const next = await execCommand(["echo", "ok"]);
      assert.deepEqual(next.stdout, "ok\n");
    });
  } finally {
    await pool.close();
  }
  const direct = await execCommand(["echo", "direct"]);
  assert.equal(direct.stdout, "direct\n", "after close(), commands are spawned again");
});

Deno.test("a new shell pool removes the output directories of pools whose process is gone", async () => {
  // A process that has exited (its pid is gone), and pid 1, which is always there.
  const gone = new Deno.Command("true").spawn();
  await gone.status;
  const base = scratch.dir ?? Deno.env.get("TMPDIR") ?? "/tmp";
  const dead = await Deno.makeTempDir({ prefix: `cilia-sh-${gone.pid}-`, dir: base });
  const alive = await Deno.makeTempDir({ prefix: "cilia-sh-1-", dir: base });
  try {
    await Deno.writeTextFile(`${dead}/0.out`, "left by a killed agent");
    const pool = await useShellPool(1);
    try {
      assert.equal(await Deno.stat(dead).then(() => "kept", () => "removed"), "removed");
      assert.equal(await Deno.stat(alive).then(() => "kept", () => "removed"), "kept");
      assert.deepEqual((await execCommand(["echo", "ok"])).stdout, "ok\n");
    } finally {
      await pool.close();
    }
  } finally {
    await Deno.remove(dead, { recursive: true }).catch(() => {});
    await Deno.remove(alive, { recursive: true });
  }
});
