// The Worker behind socket termination (sock_term.ts): on its own OS thread it setns()es into
// each network namespace it is given, creates and reads the iterators of the links the main
// thread made (a socket iterator walks the namespace of the thread that creates it) and returns
// to its own namespace before the next one; setns moves only this thread, so the agent's event
// loop runs on meanwhile. It answers one request with the TermResult, or says that it could not
// return to its own namespace ("stuck": the main thread then terminates it; no code of the agent
// runs on this thread again). It owns no map entry and no link: the main thread writes, deletes
// and closes those whatever happens here. It uses libc and libbpf through its own FFI handles,
// opened for the request and closed after it.
import type { TermResult } from "./sock_term.ts";

/** Main → Worker: iterate `links` (fds of the main thread's iterator links) in each of `netns`. */
export interface WalkRequest {
  links: number[];
  netns: string[];
  /** [0] set by the main thread: stop at the next namespace (answer "stopped"). */
  stop?: Int32Array;
  /** Tests only: close this thread's namespace fd before the first return, so that setns back
   * fails for real (EBADF) and the "stuck" path runs. */
  faultCloseHome?: boolean;
}

/** Worker → main. */
export type WalkReply =
  | { t: "done"; result: TermResult }
  | { t: "stuck"; message: string; result: TermResult }
  | { t: "stopped"; result: TermResult }
  | { t: "error"; message: string };

const CLONE_NEWNET = 0x40000000, O_RDONLY_CLOEXEC = 0o2000000;
const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  setns: { parameters: ["i32", "i32"], result: "i32" },
  strerror: { parameters: ["i32"], result: "pointer" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;
const BPF_SYMBOLS = { bpf_iter_create: { parameters: ["i32"], result: "i32" } } as const;
type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
type Libbpf = Deno.DynamicLibrary<typeof BPF_SYMBOLS>["symbols"];

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<WalkRequest>) => void) | null;
  postMessage(m: WalkReply): void;
};
const cstr = (s: string) => new TextEncoder().encode(s + "\0");

/** setns back failed: this thread is in another namespace and must run no more code. */
class Stuck extends Error {}
/** The main thread asked to stop (the walk is past its bound, or the agent closes). */
class Stopped extends Error {}

scope.onmessage = ({ data: req }) => {
  const libc = Deno.dlopen("libc.so.6", SYMBOLS);
  const libbpf = Deno.dlopen("libbpf.so.1", BPF_SYMBOLS);
  const result: TermResult = { walked: 0, failed: [] };
  let reply: WalkReply;
  try {
    walk(libc.symbols, libbpf.symbols, req, result);
    reply = { t: "done", result };
  } catch (err) {
    if (err instanceof Stopped) reply = { t: "stopped", result };
    else {
      const message = err instanceof Error ? err.message : String(err);
      reply = err instanceof Stuck ? { t: "stuck", message, result } : { t: "error", message };
    }
  } finally {
    libbpf.close();
    libc.close();
  }
  scope.postMessage(reply);
};

/** Reads every iterator in this thread's namespace, then in each of req.netns (setns and back). */
function walk(libc: Libc, bpf: Libbpf, req: WalkRequest, result: TermResult): void {
  const errnoText = (e: number) => {
    const p = libc.strerror(e);
    return p === null ? `error ${e}` : Deno.UnsafePointerView.getCString(p);
  };
  const errno = () => new Deno.UnsafePointerView(libc.__errno_location()!).getInt32();
  const buf = new Uint8Array(4096);
  const readAll = () => {
    for (const link of req.links) {
      const it = bpf.bpf_iter_create(link);
      if (it < 0) throw new Error(`Cannot create the iterator: ${errnoText(-it)}`);
      try {
        while (true) { // sock_term.h 3.: nothing is printed, one read is the whole walk
          const n = Number(libc.read(it, buf, BigInt(buf.length)));
          if (n === 0) break;
          if (n < 0) throw new Error(`Cannot read the iterator: ${errnoText(errno())}`);
        }
      } finally {
        libc.close(it);
      }
    }
  };
  const home = libc.open(cstr("/proc/thread-self/ns/net"), O_RDONLY_CLOEXEC);
  if (home < 0) throw new Error(`Cannot open the worker's netns: ${errnoText(errno())}`);
  let homeOpen = true;
  try {
    readAll();
    result.walked++;
    for (const path of req.netns) {
      if (req.stop && Atomics.load(req.stop, 0) !== 0) throw new Stopped();
      const fd = libc.open(cstr(path), O_RDONLY_CLOEXEC);
      if (fd < 0) {
        result.failed.push({ netns: path, error: errnoText(errno()) });
        continue;
      }
      let error: string | undefined;
      if (libc.setns(fd, CLONE_NEWNET) !== 0) error = `setns: ${errnoText(errno())}`;
      else {
        try {
          readAll();
        } catch (err) {
          error = (err as Error).message;
        }
      }
      libc.close(fd);
      if (req.faultCloseHome && homeOpen) homeOpen = libc.close(home) !== 0;
      if (libc.setns(home, CLONE_NEWNET) !== 0) {
        throw new Stuck(
          `Cannot return to the worker's netns from "${path}": ${errnoText(errno())}`,
        );
      }
      if (error === undefined) result.walked++;
      else result.failed.push({ netns: path, error });
    }
  } finally {
    if (homeOpen) libc.close(home);
  }
}
