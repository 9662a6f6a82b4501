// _late_multicast.ts: a host side whose ff00::/8 route the kernel makes only after its link-up
// batch (here: its peer is still down, so the link has no carrier when it comes up, and the
// kernel makes the route when the peer comes up) has that route deleted later. A child Deno in a
// test netns does the batch and the later delete; `ip` then shows the table. Root (netns).
import assert from "node:assert/strict";
import { Lab } from "../helpers/netns.ts";
import { needs } from "../helpers/root.ts";

const SYS = new URL("../../agent/sys/rtnetlink.ts", import.meta.url).href;
const LATE = new URL("../../agent/endpoint/_late_multicast.ts", import.meta.url).href;
const CHILD = `
import { ifIndex, linkAddrGenModeNone, linkUp, routeDelMulticast, rtnetlink } from "${SYS}";
import { deleteMulticastLater, lateMulticastWaiting } from "${LATE}";
const index = ifIndex("lm0");
const errnos = await rtnetlink([
  linkAddrGenModeNone(index, "lm0"), linkUp(index, "lm0"), routeDelMulticast(index, "lm0"),
]);
deleteMulticastLater(index, "lm0");
const ip = (args) => new Deno.Command("ip", { args }).output();
await ip(["link", "set", "lm1", "up"]); // carrier: the kernel makes lm0's route now
for (let i = 0; i < 50 && lateMulticastWaiting() > 0; i++) await new Promise((r) => setTimeout(r, 50));
const waiting = lateMulticastWaiting();
// A link that never gets the route (no carrier ever) is given up after its tries, not kept.
const lone = ifIndex("ln0");
await rtnetlink([linkAddrGenModeNone(lone, "ln0"), linkUp(lone, "ln0")]);
deleteMulticastLater(lone, "ln0");
for (let i = 0; i < 150 && lateMulticastWaiting() > 0; i++) await new Promise((r) => setTimeout(r, 50));
console.log(JSON.stringify({ errnos, waiting, lone: lateMulticastWaiting() }));
`;

Deno.test({
  name: "a host side's multicast route made after its link-up batch is deleted later",
  ...needs({ root: true }),
}, async () => {
  const lab = await Lab.create();
  const netns = `${lab.prefix}lm`;
  try {
    assert.equal(
      (await new Deno.Command("ip", { args: ["netns", "add", netns] }).output()).code,
      0,
    );
    await lab.run(netns, [
      "sh",
      "-c",
      "ip link set lo up && ip link add lm0 type veth peer name lm1 && " +
      "ip link set lm1 addrgenmode none && ip link add ln0 type veth peer name ln1",
    ]);
    const script = `${lab.dir}/late_child.ts`;
    await Deno.writeTextFile(script, CHILD);
    const out = JSON.parse(
      await lab.run(netns, [Deno.execPath(), "run", "-A", "--no-config", script]),
    );
    // Mode set, up, and no route to delete yet (ESRCH) in the batch.
    assert.deepEqual(out.errnos, [0, 0, 3]);
    assert.equal(out.waiting, 0, "the late route was found and deleted");
    assert.equal(out.lone, 0, "a link that never gets the route is given up");
    const local = await lab.run(netns, ["ip", "-6", "route", "show", "table", "local"]);
    assert.doesNotMatch(local, /ff00::\/8 dev lm0 /, local);
    assert.match(local, /ff00::\/8 dev lm1 /, "the peer's route is not touched");
  } finally {
    await new Deno.Command("ip", { args: ["netns", "del", netns], stderr: "null" }).output();
    await lab.close();
  }
});
