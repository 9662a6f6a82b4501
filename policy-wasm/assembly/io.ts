// Host I/O for the engine: one scratch input buffer the host writes into and one output buffer the
// host reads from. Every export of the engine takes numbers only; byte payloads travel through
// these two buffers. Nothing here throws: sizes are clamped and statuses are returned. The one
// exception is a buffer larger than MAX_BUFFER: input_reserve() cannot hand out room it does not
// have (the host would write past it), so it traps, and the facade recovers.

let inputBuf: ArrayBuffer = new ArrayBuffer(1 << 16);
let outputBuf: ArrayBuffer = new ArrayBuffer(1 << 16);
let outputLen: i32 = 0;

/** The largest buffer the engine grows to (1 GiB); doubling past it would overflow an i32. */
const MAX_BUFFER: i32 = 1 << 30;

/** The capacity (a power of two times the current one) that holds `len`; traps past MAX_BUFFER. */
function grownCapacity(cap: i32, len: i32): i32 {
  if (len > MAX_BUFFER) unreachable();
  while (cap < len) cap <<= 1;
  return cap;
}

/** Makes room for `len` bytes of input and returns where the host must write them. */
export function input_reserve(len: i32): usize {
  if (len < 0) len = 0;
  if (len > inputBuf.byteLength) {
    inputBuf = new ArrayBuffer(grownCapacity(inputBuf.byteLength, len));
  }
  return changetype<usize>(inputBuf);
}

/** Start of the input the host wrote with input_reserve(). */
export function inputPtr(): usize {
  return changetype<usize>(inputBuf);
}

/** A length the host passed, clamped to the input buffer: nothing past it is ever read. */
export function inputLen(len: i32): i32 {
  if (len < 0) return 0;
  return len > inputBuf.byteLength ? inputBuf.byteLength : len;
}

export function output_ptr(): usize {
  return changetype<usize>(outputBuf);
}

export function output_len(): i32 {
  return outputLen;
}

/** Replaces the output with `len` bytes copied from `src`. */
export function setOutput(src: usize, len: i32): void {
  ensureOutput(len);
  memory.copy(changetype<usize>(outputBuf), src, <usize> len);
  outputLen = len;
}

/** Makes the output buffer at least `len` bytes long, keeping its first outputLen bytes. */
export function ensureOutput(len: i32): void {
  if (len <= outputBuf.byteLength) return;
  const next = new ArrayBuffer(grownCapacity(outputBuf.byteLength, len));
  memory.copy(changetype<usize>(next), changetype<usize>(outputBuf), <usize> outputLen);
  outputBuf = next;
}

export function setOutputLen(len: i32): void {
  outputLen = len;
}

/** Writes a finished ByteWriter's bytes to the output. */
export function outputBytes(buf: ArrayBuffer, len: i32): void {
  setOutput(changetype<usize>(buf), len);
}
