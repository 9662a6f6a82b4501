// Worker for engine_decoder_test.ts: asks a fresh engine instance to reserve absurd input sizes,
// in a worker so that a hang (a size loop that never ends) is a timeout, not a stuck test run.

import { WASM_URL } from "./_raw_engine.ts";

const self = globalThis as unknown as {
  onmessage: (e: MessageEvent<number[]>) => void;
  postMessage(v: unknown): void;
};

self.onmessage = async (e) => {
  const module = await WebAssembly.compile(await Deno.readFile(WASM_URL));
  const out: string[] = [];
  for (const len of e.data) {
    const x = new WebAssembly.Instance(module, {}).exports as unknown as {
      memory: WebAssembly.Memory;
      input_reserve(len: number): number;
    };
    try {
      const ptr = x.input_reserve(len) >>> 0;
      const room = x.memory.buffer.byteLength - ptr;
      out.push(room >= len ? "reserved" : `pointer ${ptr} with only ${room} bytes for ${len}`);
    } catch (err) {
      out.push(`trap: ${(err as Error).message}`);
    }
  }
  self.postMessage(out);
};
