// Where the engine's bytes come from: the copy embedded by scripts/build_wasm.ts, so that Deno,
// Node.js and the browser load the same module without file or network access. This module is
// browser compatible.

import { decodeBase64 } from "./base64.ts";

let cached: Uint8Array | undefined;

export async function loadPolicyWasm(): Promise<Uint8Array> {
  if (cached) return cached;
  let mod: { POLICY_WASM_BASE64: string };
  try {
    mod = await import("./wasm_bytes.generated.ts");
  } catch (cause) {
    throw new Error(
      `Cannot load "policy.wasm": policy-wasm/src/wasm_bytes.generated.ts is missing: run "deno task build:wasm" (or scripts/setup)`,
      { cause },
    );
  }
  cached = decodeBase64(mod.POLICY_WASM_BASE64);
  return cached;
}

/** The engine's build id: the first 12 hex digits of the SHA-256 of policy.wasm's bytes. */
export async function engineBuildId(): Promise<string> {
  const bytes = await loadPolicyWasm();
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>),
  );
  return [...digest.slice(0, 6)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
