// scripts/bench/_l7_profile.ts: the syscall counts `bench l7 --profile` prints per request come
// from a real `perf stat` on syscall tracepoints (needs root and perf).
import assert from "node:assert/strict";
import { parsePerfStat } from "../../scripts/bench/_l7_profile.ts";

Deno.test("parsePerfStat() reads perf stat's syscall counts of a real process", async () => {
  const r = await new Deno.Command("perf", {
    args: [
      "stat",
      "-x",
      ";",
      "-e",
      "syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_sendto",
      "--",
      "dd",
      "if=/dev/zero",
      "of=/dev/null",
      "bs=1",
      "count=3000",
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
  const counts = parsePerfStat(new TextDecoder().decode(r.stderr));
  // dd copies byte by byte: one read and one write per byte, plus its start-up's few.
  assert(counts.read! >= 3000 && counts.read! < 3200, JSON.stringify(counts));
  assert(counts.write! >= 3000 && counts.write! < 3200, JSON.stringify(counts));
  assert.equal(counts.sendto ?? 0, 0);
});

Deno.test("parsePerfStat() skips lines that are not counts", () => {
  const text = "# started on x\n<not counted>;;syscalls:sys_enter_read;0;100.00;;\n" +
    "12;;syscalls:sys_enter_write;1000;100.00;;\n";
  assert.deepEqual(parsePerfStat(text), { write: 12 });
});
