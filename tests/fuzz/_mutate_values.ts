/**
 * Structured mutations of JSON-like values (policies, API bodies): drop, rename, duplicate or
 * swap fields, wrong types, huge and odd numbers, unicode, deep nesting; and text mutations of
 * their YAML/JSON form (duplicate keys, anchors and alias bombs, truncation, stray characters).
 * Also the corpus of valid policy documents the policy fuzz starts from.
 */

import { parse, parseAllDocuments, stringify } from "yaml";
import type { Rand } from "./_rand.ts";

// deno-lint-ignore no-explicit-any
export type Json = any;

const root = new URL("../../", import.meta.url);

/** Every policy document of examples/policies and tests/policy_cases, as parsed values. */
export async function policyCorpus(): Promise<Json[]> {
  const texts: string[] = [];
  for (const dir of ["examples/policies/", "tests/policy_cases/"]) {
    for await (const e of Deno.readDir(new URL(dir, root))) {
      if (!e.isFile || !/\.ya?ml$/.test(e.name)) continue;
      const text = await Deno.readTextFile(new URL(dir + e.name, root));
      if (e.name.includes("scenario") || dir.startsWith("tests")) {
        const doc = parse(text) as { policies?: unknown[] } | null;
        for (const p of doc?.policies ?? []) {
          texts.push(typeof p === "string" ? p : JSON.stringify(p));
        }
      } else {
        texts.push(text);
      }
    }
  }
  texts.sort();
  return texts.flatMap((t) => parseAllDocuments(t).map((d) => d.toJS())).filter((v) => v);
}

/** Every scenario file (examples/policies/*.scenario.yaml, tests/policy_cases/*.yaml), parsed. */
export async function scenarioCorpus(): Promise<Json[]> {
  const out: [string, Json][] = [];
  for (const dir of ["examples/policies/", "tests/policy_cases/"]) {
    for await (const e of Deno.readDir(new URL(dir, root))) {
      if (!e.isFile || !/\.ya?ml$/.test(e.name)) continue;
      if (dir.startsWith("examples") && !e.name.includes("scenario")) continue;
      out.push([dir + e.name, parse(await Deno.readTextFile(new URL(dir + e.name, root)))]);
    }
  }
  return out.sort(([a], [b]) => a.localeCompare(b)).map(([, v]) => v).filter((v) => v);
}

export const STRANGE_STRINGS = [
  "",
  " ",
  "\t",
  "a".repeat(5000),
  "é",
  "日本語",
  "😀",
  "\u202e\u0645\u0631\u062d\u0628\u0627",
  "\u200b",
  "\u0000",
  "\ud800",
  "\ufeff",
  "..",
  "../../etc/passwd",
  "%2e%2e%2f",
  "a/b",
  "k8s:app=web",
  "app=web,tier=1",
  "toString",
  "__proto__",
  "constructor",
  "hasOwnProperty",
  "null",
  "true",
  "0x50",
  "1e3",
  "-1",
  "80-90",
  "65536",
  "٨٠",
  "TCP",
  "tcp",
  "ANY",
  "ICMP",
  "10.0.0.0/8",
  "10.0.0.0/33",
  "::/0",
  "fe80::1%eth0",
  "256.1.1.1",
  "(",
  "[a-",
  "(a+)+$",
  "x{2000}",
  "\\",
  "*",
  "**.",
  "GET",
  "In",
  "NotIn",
  "Exists",
  "world",
  "all",
  "host",
  "*.example.com",
];

export const STRANGE_NUMBERS = [
  0,
  -0,
  -1,
  1,
  0.5,
  80,
  65535,
  65536,
  2 ** 31 - 1,
  2 ** 31,
  2 ** 32,
  2 ** 53 + 1,
  -(2 ** 63),
  1e308,
  Number.MAX_VALUE,
  Number.MIN_VALUE,
];

/** Nested arrays/objects `depth` levels deep. */
export function deepValue(r: Rand, depth: number): Json {
  let v: Json = r.pick(["x", 1, null]);
  for (let i = 0; i < depth; i++) {
    v = r.chance(0.5) ? [v] : { [r.pick(["a", "spec", "ingress"])]: v };
  }
  return v;
}

export function strangeValue(r: Rand): Json {
  switch (r.int(9)) {
    case 0:
      return r.pick(STRANGE_STRINGS);
    case 1:
      return r.pick(STRANGE_NUMBERS);
    case 2:
      return r.pick([true, false, null]);
    case 3:
      return [];
    case 4:
      return {};
    case 5:
      return Array.from({ length: r.range(1, 4) }, () => r.pick(STRANGE_STRINGS));
    case 6:
      return { [r.pick(STRANGE_STRINGS)]: r.pick(STRANGE_STRINGS) };
    case 7:
      return deepValue(r, r.pick([3, 20, 200]));
    default:
      return String.fromCodePoint(...Array.from({ length: r.range(1, 12) }, () => r.int(0x3000)));
  }
}

/** All [container, key] places inside `v` (objects and arrays), depth-first. */
function places(v: Json, out: [Json, Json][] = []): [Json, Json][] {
  if (Array.isArray(v)) {
    v.forEach((x, i) => {
      out.push([v, i]);
      places(x, out);
    });
  } else if (v && typeof v === "object") {
    for (const k of Object.keys(v)) {
      out.push([v, k]);
      places(v[k], out);
    }
  }
  return out;
}

function typo(r: Rand, key: string): string {
  const ops = [
    () => key + "s",
    () => key.slice(0, -1),
    () => key.toLowerCase(),
    () => key.toUpperCase(),
    () => key.length > 1 ? key.charAt(1) + key.charAt(0) + key.slice(2) : key + key,
    () => r.pick(STRANGE_STRINGS),
    () => " " + key,
  ];
  return r.pick(ops)();
}

/** One structural mutation of a copy of `value`; returns the copy and what was done. */
export function mutateValue(r: Rand, value: Json): [Json, string] {
  const v = structuredClone(value);
  const all = places(v);
  if (all.length === 0) return [strangeValue(r), "replaced the root"];
  const [c, k] = r.pick(all);
  const path = String(k);
  switch (r.int(9)) {
    case 0:
      if (Array.isArray(c)) c.splice(k as number, 1);
      else delete c[k];
      return [v, `dropped ${path}`];
    case 1: {
      if (Array.isArray(c)) return [v, "nothing"];
      const nk = typo(r, path);
      c[nk] = c[k];
      delete c[k];
      return [v, `renamed ${path} to ${JSON.stringify(nk)}`];
    }
    case 2:
      if (Array.isArray(c)) c.push(structuredClone(c[k]));
      else c[typo(r, path)] = structuredClone(c[k]);
      return [v, `duplicated ${path}`];
    case 3:
    case 4:
    case 5:
      c[k] = strangeValue(r);
      return [v, `${path} = ${JSON.stringify(c[k])?.slice(0, 60)}`];
    case 6: {
      const [c2, k2] = r.pick(all);
      const t = c[k];
      c[k] = c2[k2];
      c2[k2] = t;
      return [v, `swapped ${path} and ${String(k2)}`];
    }
    case 7:
      c[k] = [c[k], structuredClone(c[k])];
      return [v, `${path} wrapped in a list`];
    default:
      if (Array.isArray(c)) {
        for (let i = 0; i < r.range(1, 200); i++) c.push(structuredClone(c[k]));
      } else {
        c[k] = typeof c[k] === "string" ? c[k].repeat(r.range(2, 400)) : c[k];
      }
      return [v, `${path} repeated`];
  }
}

/** YAML or JSON text of `value`. */
export function serialize(r: Rand, value: Json): string {
  if (r.chance(0.4)) return JSON.stringify(value, null, r.chance(0.5) ? 2 : undefined) ?? "null";
  return stringify(value, { aliasDuplicateObjects: r.chance(0.5) });
}

/** A billion-laughs document: `levels` anchors, each aliasing the previous one `fan` times. */
export function aliasBomb(levels: number, fan: number, at = "metadata"): string {
  const lines = [`a0: &a0 ["lol", "lol"]`];
  for (let i = 1; i < levels; i++) {
    lines.push(`a${i}: &a${i} [${Array(fan).fill(`*a${i - 1}`).join(", ")}]`);
  }
  return `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n${lines.join("\n")}\n${at}: *a${
    levels - 1
  }\nspec: {endpointSelector: {}}\n`;
}

/** One text-level mutation of YAML/JSON `text`. */
export function mutateText(r: Rand, text: string): [string, string] {
  const lines = text.split("\n");
  switch (r.int(9)) {
    case 0: {
      const i = r.int(lines.length);
      lines.splice(i, 0, lines[i]!);
      return [lines.join("\n"), `duplicated line ${i + 1}`];
    }
    case 1: {
      const n = r.int(text.length + 1);
      return [text.slice(0, n), `truncated at ${n}`];
    }
    case 2: {
      const at = r.int(text.length + 1);
      const s = r.pick([
        "{",
        "}",
        "[",
        "]",
        ":",
        "- ",
        "&x ",
        "*x",
        "!!binary ",
        "!foo ",
        "? ",
        "|",
        ">",
        "#",
        "\t",
        "\r\n",
        "\u0000",
        "%YAML 1.1\n",
        "---\n",
        "...\n",
        "<<: *x\n",
        '"',
        "'",
        "\\",
      ]);
      return [text.slice(0, at) + s + text.slice(at), `inserted ${JSON.stringify(s)} at ${at}`];
    }
    case 3: {
      // An anchor on one value and an alias in place of another (may be recursive).
      const i = r.int(lines.length), j = r.int(lines.length);
      const m = lines[i]!.match(/^(\s*(?:- )?[\w"'./-]+:)(\s.*)?$/);
      const n = lines[j]!.match(/^(\s*(?:- )?[\w"'./-]+:)\s.*$/);
      if (!m || !n) return [text, "nothing"];
      lines[i] = `${m[1]} &anc${m[2] ?? ""}`;
      lines[j] = `${n[1]} *anc`;
      return [lines.join("\n"), `aliased line ${j + 1} to line ${i + 1}`];
    }
    case 4:
      return [
        aliasBomb(r.range(3, 12), r.range(2, 10), r.pick(["metadata", "spec", "x"])),
        "alias bomb",
      ];
    case 5:
      return ["\ufeff" + text.replaceAll("\n", "\r\n"), "BOM and CRLF"];
    case 6:
      return [`${text}\n---\n${text}`, "document twice"];
    case 7:
      return [
        `apiVersion: v1\nkind: List\nitems:\n${
          text.split("\n").map((l, i) => (i === 0 ? "  - " : "    ") + l).join("\n")
        }`,
        "wrapped in a List",
      ];
    default: {
      const at = r.int(text.length);
      const ch = String.fromCharCode(r.int(128));
      return [text.slice(0, at) + ch + text.slice(at + 1), `char ${ch.charCodeAt(0)} at ${at}`];
    }
  }
}
