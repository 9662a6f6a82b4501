// rtnetlink.ts: the host side's requests made in process. A child Deno inside a test netns sets
// a veth up with fe80::1 and routes to a pod address through them, and another up without IPv6
// address generation, without its multicast route and with a permanent neighbour entry (a CNI
// ADD's host side); `ip -j` then
// shows what the kernel holds. The kernel's refusals come back as errors naming the request and
// the errno. Root (netns).
import assert from "node:assert/strict";
import {
  addrAdd,
  linkAddrGenModeNone,
  neighReplacePermanent,
  routeDelMulticast,
  routeReplaceHost,
} from "../../agent/sys/rtnetlink.ts";
import { Lab } from "../helpers/netns.ts";
import { needs } from "../helpers/root.ts";

const MODULE = new URL("../../agent/sys/rtnetlink.ts", import.meta.url).href;
const CHILD = `
import {
  addrAdd, ifIndex, linkAddrGenModeNone, linkUp, neighReplacePermanent, routeDelMulticast,
  routeReplaceHost, rtnetlink,
} from "${MODULE}";
const dev = "rta", index = ifIndex(dev);
const out = { index, missing: ifIndex("nope") ?? null, errors: [] };
await rtnetlink([
  addrAdd(index, { ip: "fe80::1", prefix: 64, nodad: true, name: dev }),
  linkUp(index, dev),
  routeReplaceHost(index, { dst: "192.0.2.7", src: "192.0.2.1", name: dev }),
  routeReplaceHost(index, { dst: "2001:db8::7", src: "2001:db8::1", name: dev }),
  routeReplaceHost(index, { dst: "192.0.2.7", src: "192.0.2.1", name: dev }), // replace: no error
]);
for (const r of [
  addrAdd(index, { ip: "fe80::1", prefix: 64, nodad: true, name: dev }),
  routeReplaceHost(index, { dst: "192.0.2.8", src: "198.51.100.9", name: dev }),
]) {
  try { await rtnetlink([r]); out.errors.push(null); }
  catch (e) { out.errors.push({ name: e.name, message: e.message, errno: e.errno }); }
}
// In one batch a refused request does not stop the next; the first refused is thrown.
try {
  await rtnetlink([
    addrAdd(index, { ip: "fe80::1", prefix: 64, nodad: true, name: dev }),
    routeReplaceHost(index, { dst: "192.0.2.9", name: dev }),
  ]);
  out.batch = null;
} catch (e) { out.batch = e.message; }
// A CNI ADD's host side: no IPv6 address generation, up, no multicast route, a /128 and a
// permanent neighbour; the control link only comes up. Their peers are up, so both links have a
// carrier when they do.
const ep = ifIndex("rtc"), control = ifIndex("rte"), small = ifIndex("rtg");
await rtnetlink([
  linkAddrGenModeNone(ep, "rtc"),
  linkUp(ep, "rtc"),
  routeDelMulticast(ep, "rtc"),
  routeReplaceHost(ep, { dst: "2001:db8::c", src: "2001:db8::1", name: "rtc" }),
  neighReplacePermanent(ep, { ip: "2001:db8::c", mac: "02:00:00:00:00:0c", name: "rtc" }),
  linkUp(control, "rte"),
]);
// A link without IPv6 (MTU under 1280) refuses the mode with EAFNOSUPPORT: tolerated.
try { await rtnetlink([linkAddrGenModeNone(small, "rtg")]); out.small = null; }
catch (e) { out.small = e.message; }
const strict = { ...linkAddrGenModeNone(small, "rtg"), tolerate: [] };
try { await rtnetlink([strict]); out.strict = null; }
catch (e) { out.strict = e.errno; }
// The multicast route already gone (ESRCH) is tolerated; not tolerated, it names the request.
await rtnetlink([routeDelMulticast(ep, "rtc")]);
try { await rtnetlink([{ ...routeDelMulticast(ep, "rtc"), tolerate: [] }]); out.gone = null; }
catch (e) { out.gone = e.message; }
// More requests than one datagram's acknowledgements fit in the receive buffer: all answered.
out.many = (await rtnetlink(Array.from({ length: 400 }, () => routeDelMulticast(ep, "rtc"))))
  .filter((e) => e === 3).length;
console.log(JSON.stringify(out));
`;

Deno.test("rtnetlink request builders: addresses encoded, bad ones refused", () => {
  const v6 = routeReplaceHost(3, { dst: "2001:db8::7", src: "2001:db8:0:0:0:0:0:1", name: "x" });
  // rtmsg (12 bytes), then RTA_DST: length 20, type 1, the 16 address bytes.
  assert.deepEqual([...v6.body.slice(0, 2)], [10, 128]);
  assert.deepEqual([...v6.body.slice(16, 32)], [32, 1, 13, 184, ...Array(11).fill(0), 7]);
  assert.equal(v6.what, "route replace 2001:db8::7/128 dev x src 2001:db8:0:0:0:0:0:1");
  const v4 = routeReplaceHost(3, { dst: "192.0.2.7", name: "x" });
  assert.deepEqual([...v4.body.slice(0, 8)], [2, 32, 0, 0, 254, 3, 253, 1]);
  const ll = addrAdd(5, { ip: "fe80::1", prefix: 64, nodad: true, name: "x" });
  assert.deepEqual([...ll.body.slice(0, 8)], [10, 64, 2, 253, 5, 0, 0, 0]);
  for (const bad of ["1.2.3", "1.2.3.256", "::1::", "2001:db8::g", "1:2:3:4:5:6:7:8:9"]) {
    assert.throws(() => routeReplaceHost(1, { dst: bad, name: "x" }), TypeError, bad);
  }
  assert.throws(
    () => routeReplaceHost(1, { dst: "192.0.2.7", src: "2001:db8::1", name: "x" }),
    /families differ/,
  );
  // ndmsg: family, pad, ifindex 7, state NUD_PERMANENT; NDA_DST (20 bytes), NDA_LLADDR (10).
  const nb = neighReplacePermanent(7, { ip: "2001:db8::7", mac: "02:0a:0b:0c:0d:ee", name: "x" });
  assert.deepEqual([...nb.body.slice(0, 10)], [10, 0, 0, 0, 7, 0, 0, 0, 0x80, 0]);
  assert.deepEqual([...nb.body.slice(12, 16)], [20, 0, 1, 0]);
  assert.deepEqual([...nb.body.slice(32, 42)], [10, 0, 2, 0, 2, 10, 11, 12, 13, 0xee]);
  for (const bad of ["02:0a:0b:0c:0d", "02:0a:0b:0c:0d:0g", "020a0b0c0dee"]) {
    assert.throws(
      () => neighReplacePermanent(1, { ip: "2001:db8::7", mac: bad, name: "x" }),
      TypeError,
      bad,
    );
  }
  // IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE: 1 } }, both nests flagged.
  const gen = linkAddrGenModeNone(9, "x");
  assert.deepEqual([...gen.body.slice(16)], [
    16,
    0,
    26,
    0x80,
    12,
    0,
    10,
    0x80,
    5,
    0,
    8,
    0,
    1,
    0,
    0,
    0,
  ]);
  assert.deepEqual(gen.tolerate, [97]);
  // rtmsg: AF_INET6, /8, table local, any protocol, type RTN_MULTICAST; RTA_DST ff00::, RTA_OIF.
  const mc = routeDelMulticast(4, "x");
  assert.deepEqual([...mc.body.slice(0, 8)], [10, 8, 0, 0, 255, 0, 0, 5]);
  assert.deepEqual([...mc.body.slice(12, 17)], [20, 0, 1, 0, 0xff]);
  assert.deepEqual([...mc.body.slice(32)], [8, 0, 4, 0, 4, 0, 0, 0]);
  assert.deepEqual([mc.type, mc.tolerate, mc.what], [
    25,
    [3],
    "route del multicast ff00::/8 dev x table local",
  ]);
});

Deno.test({
  name: "rtnetlink() sets a link up with an address and routes; refusals name the request",
  ...needs({ root: true }),
}, async () => {
  const lab = await Lab.create();
  const netns = `${lab.prefix}rt`;
  try {
    const setup = "ip link set lo up && ip link add rta type veth peer name rtb && " +
      "ip addr add 192.0.2.1/32 dev lo && ip addr add 2001:db8::1/128 dev lo nodad && " +
      "ip link add rtc type veth peer name rtd && ip link add rte type veth peer name rtf && " +
      "ip link add rtg mtu 1000 type veth peer name rth mtu 1000 && " +
      "ip link set rtd up && ip link set rtf up && sysctl -qw net.ipv6.conf.all.accept_dad=0";
    assert.equal(
      (await new Deno.Command("ip", { args: ["netns", "add", netns] }).output()).code,
      0,
    );
    await lab.run(netns, ["sh", "-c", setup]);
    const script = `${lab.dir}/rt_child.ts`;
    await Deno.writeTextFile(script, CHILD);
    const out = JSON.parse(
      await lab.run(netns, [Deno.execPath(), "run", "-A", "--no-config", script]),
    );
    assert.ok(out.index > 0, JSON.stringify(out));
    assert.equal(out.missing, null);
    const [link] = JSON.parse(await lab.run(netns, ["ip", "-j", "addr", "show", "dev", "rta"]));
    assert.ok(link.flags.includes("UP"), JSON.stringify(link.flags));
    const ll = link.addr_info.find((a: { local: string }) => a.local === "fe80::1");
    assert.deepEqual([ll?.prefixlen, ll?.nodad], [64, true], JSON.stringify(link.addr_info));
    const [r4] = JSON.parse(await lab.run(netns, ["ip", "-j", "route", "show", "192.0.2.7"]));
    assert.deepEqual([r4.dev, r4.prefsrc, r4.scope], ["rta", "192.0.2.1", "link"]);
    const [r6] = JSON.parse(
      await lab.run(netns, ["ip", "-j", "-6", "route", "show", "2001:db8::7"]),
    );
    assert.deepEqual([r6.dev, r6.prefsrc], ["rta", "2001:db8::1"]);
    assert.equal(out.batch, "Cannot addr add fe80::1/64 dev rta nodad: File exists");
    const [r9] = JSON.parse(await lab.run(netns, ["ip", "-j", "route", "show", "192.0.2.9"]));
    assert.equal(r9?.dev, "rta", "the request after the refused one was carried out");
    const addrs = async (dev: string) =>
      (JSON.parse(await lab.run(netns, ["ip", "-j", "-6", "addr", "show", "dev", dev]))[0]
        ?.addr_info ?? []).map((a: { local: string }) => a.local);
    assert.deepEqual(await addrs("rtc"), [], "no IPv6 address on the endpoint's host side");
    assert.match((await addrs("rte")).join(), /^fe80:/, "the control link made its link-local");
    const [rtc] = JSON.parse(await lab.run(netns, ["ip", "-j", "-d", "link", "show", "rtc"]));
    assert.deepEqual([rtc.inet6_addr_gen_mode, rtc.flags.includes("UP")], ["none", true]);
    const routes = await lab.run(netns, [
      "ip",
      "-6",
      "route",
      "show",
      "table",
      "all",
      "dev",
      "rtc",
    ]);
    assert.deepEqual(
      routes.trim().split("\n").map((l) => l.replace(/ (src|proto|table|metric) .*/, "")).sort(),
      ["2001:db8::c"],
      routes,
    );
    const control = await lab.run(netns, ["ip", "-6", "route", "show", "table", "local"]);
    assert.match(control, /multicast ff00::\/8 dev rte /, "only the endpoint's route was deleted");
    assert.equal(
      out.gone,
      "Cannot route del multicast ff00::/8 dev rtc table local: No such process",
    );
    const [n] = JSON.parse(await lab.run(netns, ["ip", "-j", "-6", "neigh", "show", "dev", "rtc"]));
    assert.deepEqual([n?.dst, n?.lladdr, n?.state], ["2001:db8::c", "02:00:00:00:00:0c", [
      "PERMANENT",
    ]]);
    assert.deepEqual([out.small, out.strict], [null, 97], "EAFNOSUPPORT, tolerated");
    assert.equal(out.many, 400, "400 requests in one call: each answered ESRCH");
    assert.deepEqual(out.errors, [
      {
        name: "RtnetlinkError",
        message: "Cannot addr add fe80::1/64 dev rta nodad: File exists",
        errno: 17,
      },
      {
        name: "RtnetlinkError",
        message: "Cannot route replace 192.0.2.8/32 dev rta src 198.51.100.9: Invalid argument",
        errno: 22,
      },
    ]);
  } finally {
    await new Deno.Command("ip", { args: ["netns", "del", netns], stderr: "null" }).output();
    await lab.close();
  }
});
