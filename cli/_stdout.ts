// Writes to this process's stdout in place, without letting a full pipe hold the main thread.
// While the output takes the bytes, a write is one synchronous syscall (an async Deno write hands
// every chunk to a helper thread and back, about 4× the CPU: `bench monitor`). Into a pipe the
// syscall is pwritev2(…, RWF_NOWAIT), which answers EAGAIN instead of sleeping when the pipe is
// full; the wait for room is then poll() in place, as a blocking write would sleep, but at most
// WAIT_MS at a time: between waits the event loop runs, so a SIGINT listener still fires (Ctrl-C
// on `cilia observe --follow` whose reader stopped). No thread hop: a pipe that fills and drains
// costs one poll() more per fill than a blocking write did. An output that cannot say "would block" (a file or a terminal: EOPNOTSUPP), any
// other error (EPIPE: reported by Deno's own write), or no libc (no FFI permission) gets
// Deno.stdout.writeSync, as before. It never changes the file's flags (O_NONBLOCK would be shared
// with the shell). Linux only (the flag and errno values are Linux's).

const RWF_NOWAIT = 0x08;
const EINTR = 4, EAGAIN = 11;
const POLLOUT = 0x004;
const WAIT_MS = 100;

const SYMBOLS = {
  pwritev2: { parameters: ["i32", "buffer", "i32", "i64", "i32"], result: "isize" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

/** libc once opened; null when it cannot be (or stdout refused RWF_NOWAIT once). */
let libc: Deno.DynamicLibrary<typeof SYMBOLS> | null | undefined;
const iov = new BigUint64Array(2); // struct iovec { void *base; size_t len; }
const iovBytes = new Uint8Array(iov.buffer);
const pollFd = new Uint8Array(8); // struct pollfd { int fd; short events; short revents; }
new DataView(pollFd.buffer).setInt16(4, POLLOUT, true); // fd 1 (little-endian host)
new DataView(pollFd.buffer).setInt32(0, 1, true);

function open(): Deno.DynamicLibrary<typeof SYMBOLS> | null {
  if (libc === undefined) {
    try {
      libc = Deno.dlopen("libc.so.6", SYMBOLS);
    } catch {
      libc = null;
    }
  }
  return libc;
}

/** One write that never sleeps: bytes written, "full", or "fallback" (use writeSync). */
function tryWrite(
  lib: Deno.DynamicLibrary<typeof SYMBOLS>,
  bytes: Uint8Array,
): number | "full" | "fallback" {
  iov[0] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes)));
  iov[1] = BigInt(bytes.length);
  const n = Number(lib.symbols.pwritev2(1, iovBytes, 1, -1n, RWF_NOWAIT));
  if (n >= 0) return n;
  const errno = new Deno.UnsafePointerView(lib.symbols.__errno_location()!).getInt32();
  if (errno === EAGAIN) return "full";
  return errno === EINTR ? 0 : "fallback";
}

/** Writes all of bytes to stdout (see the module comment); throws what Deno's write throws. */
export async function writeStdout(bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) {
    const lib = open();
    const n = lib ? tryWrite(lib, bytes.subarray(at)) : "fallback";
    if (n === "full") {
      if (lib!.symbols.poll(pollFd, 1n, WAIT_MS) <= 0) await new Promise((r) => setTimeout(r, 0));
    } else if (n !== "fallback") at += n;
    else {
      libc = null; // this output refuses RWF_NOWAIT: every later write is a plain one
      at += Deno.stdout.writeSync(bytes.subarray(at));
    }
  }
}
