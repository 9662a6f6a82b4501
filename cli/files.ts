// Reading the files a command names: plain files, directories (their *.yaml, *.yml and *.json
// files, sorted) and "-" for standard input; policy files a scenario references, relative to the
// scenario. Errors name the path.

import { dirname, isAbsolute, join } from "node:path";
import type { PolicySource } from "@cilia/policy-wasm";

export interface InputFile {
  path: string;
  text: string;
}

async function readStdin(): Promise<string> {
  return await new Response(Deno.stdin.readable).text();
}

export async function readInputs(
  paths: readonly string[],
  opts: { ext?: RegExp } = {},
): Promise<InputFile[]> {
  const ext = opts.ext ?? /\.(ya?ml|json)$/;
  const out: InputFile[] = [];
  for (const p of paths) {
    if (p === "-") {
      out.push({ path: "<stdin>", text: await readStdin() });
      continue;
    }
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(p);
    } catch (cause) {
      throw new Error(
        `Cannot read "${p}": ${
          cause instanceof Deno.errors.NotFound
            ? "no such file or directory"
            : (cause as Error).message
        }`,
        { cause },
      );
    }
    if (info.isDirectory) {
      const names: string[] = [];
      for await (const e of Deno.readDir(p)) if (e.isFile && ext.test(e.name)) names.push(e.name);
      if (names.length === 0) {
        throw new Error(`Cannot read "${p}": the directory has no .yaml, .yml or .json files`);
      }
      for (const n of names.sort()) {
        const path = `${p.replace(/\/$/, "")}/${n}`;
        out.push({ path, text: await Deno.readTextFile(path) });
      }
    } else {
      out.push({ path: p, text: await Deno.readTextFile(p) });
    }
  }
  return out;
}
/** Reads `{file: …}` policies relative to the scenario that names them. */
export function readPolicyFile(path: string, from: string | undefined): PolicySource {
  const full = isAbsolute(path) || !from || from === "<stdin>" ? path : join(dirname(from), path);
  try {
    return { text: Deno.readTextFileSync(full), file: full };
  } catch (cause) {
    const why = cause instanceof Deno.errors.NotFound ? "no such file" : (cause as Error).message;
    throw new Error(`Cannot read policy file "${path}" (${full}): ${why}`, { cause });
  }
}
