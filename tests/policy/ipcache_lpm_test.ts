// The engine's ipcache (IP → identity, longest-prefix match) against a plain reference model:
// seeded random upserts and deletes of IPv4 and IPv6 prefixes (explicit registrations, as the
// agent's ipcache updates make them), then lookups of addresses inside and around them. Rules
// checked: the longest covering prefix wins, an upsert replaces a prefix's identity, a delete
// only removes a prefix still held by that identity, nothing covering an address means world (2).
// The engine indexes the prefixes by length (an update costs the same with 10 or 100,000 there);
// this test keeps that index's answers equal to the linear definition.
import assert from "node:assert/strict";
import { PolicyEngine } from "../../policy-wasm/mod.ts";
import { prng as rng } from "../helpers/prng.ts";

type Net = { family: 4 | 6; bits: number[]; len: number };

const v4 = (bits: number[]) => {
  const b = Array.from({ length: 4 }, (_, i) => parseInt(bits.slice(i * 8, i * 8 + 8).join(""), 2));
  return b.join(".");
};
const v6 = (bits: number[]) =>
  Array.from(
    { length: 8 },
    (_, i) => parseInt(bits.slice(i * 16, i * 16 + 16).join(""), 2).toString(16),
  )
    .join(":");
const text = (n: Net) => (n.family === 4 ? v4(n.bits) : v6(n.bits));
const covers = (p: Net, a: Net) =>
  p.family === a.family && p.bits.slice(0, p.len).every((b, i) => b === a.bits[i]);

Deno.test("the engine's ipcache answers as a linear longest-prefix match", async (t) => {
  const engine = await PolicyEngine.create();
  const next = rng(15);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)]!;
  // Addresses near each other (a few shared leading bits), so prefixes overlap often.
  const base = { 4: [1, 1, 0, 0, 1, 0, 1, 1], 6: [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1] };
  const address = (family: 4 | 6): Net => {
    const width = family === 4 ? 32 : 128;
    const bits = [...base[family], ...Array.from({ length: width - base[family].length }, () => 0)];
    for (let i = base[family].length; i < base[family].length + 10; i++) {
      bits[i] = next() < 0.5 ? 1 : 0;
    }
    for (let i = width - 6; i < width; i++) bits[i] = next() < 0.5 ? 1 : 0;
    if (next() < 0.1) bits[0] = 1 - bits[0]!; // now and then far from every prefix
    return { family, bits, len: width };
  };
  const model = new Map<string, { net: Net; identity: number }>();
  const keyOf = (n: Net) => `${n.family}/${n.bits.slice(0, n.len).join("")}`;
  const lookup = (a: Net) => {
    let best: { net: Net; identity: number } | undefined;
    for (const e of model.values()) {
      if (covers(e.net, a) && (best === undefined || e.net.len > best.net.len)) best = e;
    }
    return best?.identity ?? 2;
  };
  let checked = 0;
  for (let round = 0; round < 20; round++) {
    await t.step(`round ${round}`, () => {
      const upserts: { prefix: string; identity: number }[] = [];
      const deletes: { prefix: string; identity: number }[] = [];
      for (let i = 0; i < 40; i++) {
        const family = pick([4, 6] as const);
        const a = address(family);
        const width = family === 4 ? 32 : 128;
        const len = pick([width, width, width - 4, width - 8, 16, 12]);
        const net: Net = { family, bits: a.bits.map((b, j) => (j < len ? b : 0)), len };
        const prefix = `${text(net)}/${len}`;
        const held = model.get(keyOf(net));
        if (held !== undefined && next() < 0.4) {
          // Delete, sometimes naming another identity (which must leave the prefix alone).
          const identity = next() < 0.8 ? held.identity : held.identity + 1;
          deletes.push({ prefix, identity });
          continue;
        }
        upserts.push({ prefix, identity: 1000 + Math.floor(next() * 500) });
      }
      engine.updateIpcache([], deletes);
      for (const d of deletes) {
        const [addr, len] = d.prefix.split("/");
        for (const [k, e] of model) {
          if (e.identity === d.identity && `${text(e.net)}/${e.net.len}` === `${addr}/${len}`) {
            model.delete(k);
          }
        }
      }
      engine.updateIpcache(upserts, []);
      for (const u of upserts) {
        const [addr, len] = u.prefix.split("/");
        const family = addr!.includes(":") ? 6 : 4;
        const found = [...model.values()].find((e) =>
          `${text(e.net)}/${e.net.len}` === `${addr}/${len}`
        );
        const net = found?.net ?? parseNet(addr!, Number(len), family);
        model.set(keyOf(net), { net, identity: u.identity });
      }
      for (let i = 0; i < 60; i++) {
        const a = address(pick([4, 6] as const));
        assert.equal(engine.lookupIp(text(a)), lookup(a), `lookup of ${text(a)}`);
        checked++;
      }
    });
  }
  // Guard: the random inputs must exercise both answers, a prefix's identity and world.
  const answers = new Set<string>();
  for (let i = 0; i < 500; i++) {
    answers.add(lookup(address(pick([4, 6] as const))) === 2 ? "world" : "prefix");
  }
  assert.deepEqual([...answers].sort(), ["prefix", "world"]);
  assert.equal(checked, 1200);
});

function parseNet(addr: string, len: number, family: 4 | 6): Net {
  const bits = family === 4
    ? addr.split(".").flatMap((x) => Number(x).toString(2).padStart(8, "0").split("").map(Number))
    : addr.split(":").flatMap((x) =>
      parseInt(x, 16).toString(2).padStart(16, "0").split("").map(Number)
    );
  return { family, bits, len };
}
