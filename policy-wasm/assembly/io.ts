// Host I/O for the engine: one scratch input buffer the host writes into and one output buffer the
// host reads from. Every export of the engine takes numbers only; byte payloads travel through
// these two buffers. Nothing here throws: sizes are clamped and statuses are returned.

let inputBuf: ArrayBuffer = new ArrayBuffer(1 << 16);
let outputBuf: ArrayBuffer = new ArrayBuffer(1 << 16);
let outputLen: i32 = 0;

/** Makes room for `len` bytes of input and returns where the host must write them. */
export function input_reserve(len: i32): usize {
  if (len < 0) len = 0;
  if (len > inputBuf.byteLength) {
    let cap = inputBuf.byteLength;
    while (cap < len) cap <<= 1;
    inputBuf = new ArrayBuffer(cap);
  }
  return changetype<usize>(inputBuf);
}

/** Start of the input the host wrote with input_reserve(). */
export function inputPtr(): usize {
  return changetype<usize>(inputBuf);
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
  let cap = outputBuf.byteLength;
  while (cap < len) cap <<= 1;
  const next = new ArrayBuffer(cap);
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
