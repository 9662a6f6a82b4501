// RegexSet: up to 31 RE2 patterns compiled into one lazily built DFA in the engine, so one pass
// over an input tells which patterns fully match it (bit i of the mask: pattern i), and one call
// judges a whole batch of inputs. Inputs are written straight into the engine's input buffer with
// one TextEncoder.encodeInto per batch (ASCII needs no per-input work: byte lengths are the string
// lengths); nothing is copied twice. Linear time: no backtracking, whatever the pattern. It owns
// only a handle into one engine instance and must not outlive it. This module is browser
// compatible.

import { EngineError } from "./errors.ts";
import { regexErrorMessage } from "./regex_errors.ts";

/** Most patterns in one set (policy-wasm/assembly/regex/index.ts REGEX_SET_MAX). */
export const REGEX_SET_MAX = 31;

/** The regex exports a RegexSet needs (a subset of EngineExports). */
export interface RegexSetExports {
  memory: WebAssembly.Memory;
  input_reserve(len: number): number;
  output_ptr(): number;
  regex_set_compile(len: number, flags: number): number;
  regex_set_error_index(): number;
  regex_error_offset(): number;
  regex_match_set(h: number, len: number): number;
  regex_match_batch(h: number, n: number, len: number): number;
  regex_release(h: number): void;
}

/** Runs `fn` against the engine's current exports, turning a trap into an EngineError. */
export type EngineCall = <T>(fn: (x: RegexSetExports) => T, what: string) => T;

const enc = new TextEncoder();

export class RegexSet {
  readonly patterns: readonly string[];
  #call: EngineCall;
  #h: number;
  /** The engine instance the handle belongs to: a trap re-instantiates the engine. */
  #owner: RegexSetExports | undefined;
  #u8 = new Uint8Array(0);
  #u32 = new Uint32Array(0);

  /** Compiles `patterns` (1 to 31); a bad pattern throws a SyntaxError naming it. */
  constructor(patterns: readonly string[], call: EngineCall) {
    if (patterns.length < 1 || patterns.length > REGEX_SET_MAX) {
      throw new RangeError(
        `Cannot compile a regex set of ${patterns.length} patterns: expected 1 to ${REGEX_SET_MAX}`,
      );
    }
    this.patterns = [...patterns];
    this.#call = call;
    const encoded = patterns.map((p) => enc.encode(p));
    const len = encoded.reduce((n, b) => n + 4 + b.length, 4);
    const [h, index, offset] = call((x) => {
      const ptr = x.input_reserve(len);
      const view = new DataView(x.memory.buffer, ptr, len);
      view.setUint32(0, encoded.length, true);
      let at = 4;
      for (const b of encoded) {
        view.setUint32(at, b.length, true);
        new Uint8Array(x.memory.buffer, ptr + at + 4, b.length).set(b);
        at += 4 + b.length;
      }
      const h = x.regex_set_compile(len, 0);
      this.#owner = x;
      return [h, x.regex_set_error_index(), x.regex_error_offset()];
    }, "compile a regex set");
    if (h < 0) {
      throw new SyntaxError(
        `Invalid regex "${patterns[index]}": ${regexErrorMessage(-h, offset)}`,
      );
    }
    this.#h = h;
  }

  /** The handle in `x`, or -1 when `x` is a newer instance than the one that compiled the set. */
  #handle(x: RegexSetExports): number {
    return x === this.#owner ? this.#h : -1;
  }

  #views(x: RegexSetExports): void {
    if (this.#u8.buffer !== x.memory.buffer) {
      this.#u8 = new Uint8Array(x.memory.buffer);
      this.#u32 = new Uint32Array(x.memory.buffer);
    }
  }

  #status(st: number): number {
    if (st === -1) {
      throw new EngineError(
        "Cannot match a regex set: the engine was restarted after a trap; compile it again",
        st,
      );
    }
    if (st < 0) throw new EngineError(`Cannot match a regex set: status ${st}`, st);
    return st;
  }

  /** The mask of patterns that fully match `input`. */
  match(input: string): number {
    return this.#status(this.#call((x) => {
      const ptr = x.input_reserve(input.length * 3);
      this.#views(x);
      const { written } = enc.encodeInto(input, this.#u8.subarray(ptr, ptr + input.length * 3));
      return x.regex_match_set(this.#handle(x), written);
    }, "match a regex set"));
  }

  /** The masks of `inputs`, in one call into the engine; written to `out` when given. */
  matchBatch(inputs: readonly string[], out = new Uint32Array(inputs.length)): Uint32Array {
    const n = inputs.length;
    const joined = inputs.join("");
    const st = this.#call((x) => {
      const room = 4 * n + joined.length * 3;
      const ptr = x.input_reserve(room);
      this.#views(x);
      const u32 = this.#u32;
      const at = ptr + 4 * n;
      const { written } = enc.encodeInto(joined, this.#u8.subarray(at, ptr + room));
      let end = 0;
      if (written === joined.length) { // all ASCII: one byte per UTF-16 unit
        for (let i = 0; i < n; i++) u32[(ptr >> 2) + i] = end += inputs[i]!.length;
      } else {
        for (let i = 0; i < n; i++) {
          end += enc.encodeInto(inputs[i]!, this.#u8.subarray(at + end, ptr + room)).written;
          u32[(ptr >> 2) + i] = end;
        }
      }
      return x.regex_match_batch(this.#handle(x), n, 4 * n + end);
    }, "match a regex set");
    this.#status(st);
    const o = this.#call((x) => (this.#views(x), x.output_ptr()), "read regex set matches") >> 2;
    out.set(this.#u32.subarray(o, o + n));
    return out;
  }

  release(): void {
    this.#call((x) => {
      if (x === this.#owner) x.regex_release(this.#h);
    }, "release a regex set");
  }
}
