/**
 * Golden byte fixtures as reviewable text: each file is a hex dump (offset, 16 bytes, ASCII) of
 * one or more messages, so a change of a binary format shows as a line diff in review.
 * `assertGolden()` compares byte for byte (through the dump, which is one-to-one) and names the
 * first offset that differs; with CILIA_UPDATE_GOLDEN=1 in the environment it rewrites the file
 * instead (then review and commit the diff). It knows nothing of what the bytes mean.
 */

import assert from "node:assert/strict";

const hex = (b: number) => b.toString(16).padStart(2, "0");

/** `00000010  43 4c 49 50 01 00 …  |CLIP..|` lines for `bytes`. */
export function hexDump(bytes: Uint8Array): string[] {
  const lines: string[] = [];
  for (let at = 0; at < bytes.length; at += 16) {
    const row = [...bytes.subarray(at, at + 16)];
    const cells = row.map(hex).join(" ").padEnd(47);
    const ascii = row.map((b) => b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".").join("");
    lines.push(`${at.toString(16).padStart(8, "0")}  ${cells}  |${ascii}|`);
  }
  return lines;
}

function render(title: string, messages: readonly Uint8Array[]): string {
  const out = [
    `# ${title}`,
    "# Golden wire fixture: do not edit; regenerate with CILIA_UPDATE_GOLDEN=1 (see tests/helpers/golden.ts).",
  ];
  messages.forEach((m, i) => out.push(`# message ${i}: ${m.length} bytes`, ...hexDump(m)));
  return out.join("\n") + "\n";
}

/** True when fixtures are being regenerated rather than checked. */
export function updatingGolden(): boolean {
  return Deno.env.get("CILIA_UPDATE_GOLDEN") === "1";
}

/** Checks (or, when updating, writes) the fixture `file` holding `messages`. */
export async function assertGolden(
  file: URL,
  title: string,
  messages: readonly Uint8Array[],
): Promise<void> {
  const want = render(title, messages);
  if (updatingGolden()) {
    await Deno.mkdir(new URL("./", file), { recursive: true });
    await Deno.writeTextFile(file, want);
    return;
  }
  let have: string;
  try {
    have = await Deno.readTextFile(file);
  } catch (err) {
    throw new Error(
      `Golden fixture "${file.pathname}" is missing: create it with CILIA_UPDATE_GOLDEN=1`,
      { cause: err },
    );
  }
  if (have === want) return;
  const a = have.split("\n"), b = want.split("\n");
  let at = 0;
  while (a[at] === b[at]) at++;
  assert.fail(
    `Golden fixture "${file.pathname}" differs from the bytes now produced, first at line ${
      at + 1
    }:\n  fixture: ${a[at] ?? "(end)"}\n  now:     ${b[at] ?? "(end)"}\n` +
      `If the format changed on purpose, rerun with CILIA_UPDATE_GOLDEN=1 and commit the diff.`,
  );
}
