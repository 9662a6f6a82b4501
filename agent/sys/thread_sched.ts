// The scheduling class of the calling thread, for a data-path Worker that must run as soon as its
// socket wakes it (the DNS proxy's UDP Worker): the real-time SCHED_FIFO class at a low priority,
// with SCHED_RESET_ON_FORK (threads and processes it starts get the normal class back). Such a
// thread preempts every normal task the moment it wakes, so it must block between bursts of work
// (epoll_wait); the kernel's real-time throttling (sched_rt_runtime_us) bounds a runaway one. Best
// effort: it returns an error text instead of throwing (no CAP_SYS_NICE, RLIMIT_RTPRIO). It
// decides nothing about when to use it.

const SCHED_FIFO = 1, SCHED_RESET_ON_FORK = 0x40000000;

const SYMBOLS = {
  sched_setscheduler: { parameters: ["i32", "i32", "pointer"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const;

/**
 * The calling thread runs in SCHED_FIFO at `priority` (1–99). Returns undefined, or why it
 * could not: `sched_setscheduler failed: Operation not permitted (errno 1)`.
 */
export function setThreadFifo(priority: number): string | undefined {
  if (!Number.isInteger(priority) || priority < 1 || priority > 99) {
    return `Invalid real-time priority "${priority}": expected an integer from 1 to 99`;
  }
  const lib = Deno.dlopen("libc.so.6", SYMBOLS);
  try {
    const param = new Int32Array([priority]);
    const policy = SCHED_FIFO | SCHED_RESET_ON_FORK;
    if (lib.symbols.sched_setscheduler(0, policy, Deno.UnsafePointer.of(param)) === 0) {
      return undefined;
    }
    const e = lib.symbols.__errno_location();
    const errno = e ? new Deno.UnsafePointerView(e).getInt32() : 0;
    const s = lib.symbols.strerror(errno);
    const text = s ? Deno.UnsafePointerView.getCString(s) : "unknown error";
    return `sched_setscheduler failed: ${text} (errno ${errno})`;
  } finally {
    lib.close();
  }
}
