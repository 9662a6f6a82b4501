// agent/sys/sockets_ffi.ts, its TCP part: listenTcp() and the fast-call variants (read_p,
// write_p, epoll_ctl_p, epoll_wait_p) serve a real loopback TCP exchange with a Deno client through
// epoll, errno reports EAGAIN on an empty non-blocking socket, and a taken port is a clear error.
import assert from "node:assert/strict";
import {
  closeLibc,
  EAGAIN,
  EPOLL_CTL_ADD,
  EPOLL_EVENT_SIZE,
  EPOLLIN,
  errno,
  libc,
  listenTcp,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
} from "../../agent/sys/sockets_ffi.ts";

/** Waits (blocking, at most 2 s) until epoll reports `fd` readable. */
function waitReadable(ep: number, fd: number): void {
  const c = libc();
  const ev = new Uint8Array(EPOLL_EVENT_SIZE);
  const dv = new DataView(ev.buffer);
  dv.setUint32(0, EPOLLIN, true);
  dv.setUint32(4, fd, true);
  assert.equal(c.epoll_ctl_p(ep, EPOLL_CTL_ADD, fd, Deno.UnsafePointer.of(ev)), 0);
  const out = new Uint8Array(EPOLL_EVENT_SIZE * 4);
  const n = c.epoll_wait_p(ep, Deno.UnsafePointer.of(out), 4, 2000);
  assert.equal(n, 1, `epoll_wait gave ${n} events for fd ${fd}`);
  assert.equal(new DataView(out.buffer).getUint32(4, true), fd);
}

Deno.test("listenTcp() and the fast calls serve a loopback TCP exchange through epoll", async () => {
  const c = libc();
  const listener = listenTcp("127.0.0.1", 0);
  const ep = c.epoll_create1(SOCK_CLOEXEC);
  let accepted = -1;
  let conn: Deno.TcpConn | undefined;
  try {
    assert.ok(listener.port > 0);
    const connecting = Deno.connect({ hostname: "127.0.0.1", port: listener.port });
    waitReadable(ep, listener.fd);
    accepted = c.accept4(listener.fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
    assert.ok(accepted >= 0, `accept4 failed: errno ${errno()}`);
    conn = await connecting;

    const buf = new Uint8Array(64);
    const p = Deno.UnsafePointer.of(buf);
    assert.equal(c.read_p(accepted, p, buf.length), -1, "read on an empty socket");
    assert.equal(errno(), EAGAIN);

    await conn.write(new TextEncoder().encode("ping"));
    waitReadable(ep, accepted);
    const n = c.read_p(accepted, p, buf.length);
    assert.equal(new TextDecoder().decode(buf.subarray(0, n)), "ping");

    buf.set(new TextEncoder().encode("pong"));
    assert.equal(c.write_p(accepted, p, 4), 4);
    const got = new Uint8Array(16);
    const m = await conn.read(got);
    assert.equal(new TextDecoder().decode(got.subarray(0, m ?? 0)), "pong");
  } finally {
    conn?.close();
    if (accepted >= 0) c.close(accepted);
    c.close(ep);
    c.close(listener.fd);
    closeLibc();
  }
});

Deno.test("listenTcp() names the address when it cannot listen", () => {
  const first = listenTcp("127.0.0.1", 0);
  try {
    assert.throws(
      () => listenTcp("127.0.0.1", first.port),
      (e: Error) =>
        e.message ===
          `"bind 127.0.0.1:${first.port}" failed: Address already in use (errno 98)`,
    );
    assert.throws(() => listenTcp("127.0.0.300", 0), /Invalid IPv4 address "127\.0\.0\.300"/);
  } finally {
    libc().close(first.fd);
    closeLibc();
  }
});
