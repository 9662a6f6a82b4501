// The probe helper that the kernel conformance lab (_conformance_lab.ts) runs in each of its
// network namespaces: TCP echo listeners, UDP echo responders bound to one address each (so a
// reply leaves from the address the request was sent to, which conntrack needs), TCP and UDP
// probes from a chosen source address, and ICMP/ICMPv6 of any type through raw sockets (libc via
// FFI): echo requests wait for their reply, other types are observed where they arrive. Requests
// are JSON lines on stdin, answered (in any order) as JSON lines on stdout; it exits at EOF. It
// judges nothing: it reports what happened to the packets.
import net from "node:net";
import { parseIPv4, parseIPv6 } from "../../agent/datapath/_addr.ts";

const AF_INET = 2, AF_INET6 = 10, SOCK_RAW = 3, MSG_DONTWAIT = 0x40;
const libc = Deno.dlopen("libc.so.6", {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
});
const C = libc.symbols;

export type ProbeResult = "ok" | "timeout" | "refused" | "sent" | `error: ${string}`;

export interface ProbeRequest {
  id: number;
  op: "listen" | "tcp" | "udp" | "icmp" | "seen";
  proto?: "tcp" | "udp";
  /** Source address (probes) or bound address (UDP listen). */
  src?: string;
  dst?: string;
  port?: number;
  /** ICMP type to send or to wait for. */
  type?: number;
  /** 16 hex digits carried in the ICMP payload. */
  token?: string;
  timeoutMs?: number;
}

function sockaddr(ip: string): Uint8Array {
  const v6 = ip.includes(":");
  const out = new Uint8Array(v6 ? 28 : 16);
  const raw = v6 ? parseIPv6(ip) : parseIPv4(ip);
  if (!raw) throw new SyntaxError(`Invalid address "${ip}"`);
  new DataView(out.buffer).setUint16(0, v6 ? AF_INET6 : AF_INET, true);
  out.set(raw, v6 ? 8 : 4);
  return out;
}

function checksum(b: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < b.length; i += 2) sum += (b[i]! << 8) | (b[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** type, code 0, checksum, id/sequence, then the 8-byte token and 8 bytes of padding. */
function icmpPacket(type: number, token: string, v6: boolean): Uint8Array {
  const p = new Uint8Array(24);
  const dv = new DataView(p.buffer);
  p[0] = type;
  dv.setUint16(4, parseInt(token.slice(0, 4), 16) || 1);
  dv.setUint16(6, 1);
  for (let i = 0; i < 8; i++) p[8 + i] = parseInt(token.slice(2 * i, 2 * i + 2), 16);
  if (!v6) dv.setUint16(2, checksum(p)); // the kernel fills the ICMPv6 checksum itself
  return p;
}

function sendIcmp(src: string, dst: string, type: number, token: string): void {
  const v6 = dst.includes(":");
  const fd = C.socket(v6 ? AF_INET6 : AF_INET, SOCK_RAW, v6 ? 58 : 1);
  if (fd < 0) throw new Error(`Cannot open a raw ICMP socket: socket() returned ${fd}`);
  try {
    const from = sockaddr(src), to = sockaddr(dst), pkt = icmpPacket(type, token, v6);
    if (C.bind(fd, from, from.length) !== 0) throw new Error(`Cannot bind to "${src}"`);
    if (Number(C.sendto(fd, pkt, BigInt(pkt.length), 0, to, to.length)) !== pkt.length) {
      throw new Error(`Cannot send ICMP type ${type} to "${dst}"`);
    }
  } finally {
    C.close(fd);
  }
}

// Every ICMP/ICMPv6 packet delivered to this netns, by token: the types seen.
const seen = new Map<string, Set<number>>();
const waiters = new Set<{ token: string; type: number; done: () => void }>();
const receivers = [
  { fd: C.socket(AF_INET, SOCK_RAW, 1), v6: false },
  { fd: C.socket(AF_INET6, SOCK_RAW, 58), v6: true },
];
const rxBuf = new Uint8Array(2048);

function drain(): void {
  for (const r of receivers) {
    for (;;) {
      const n = Number(C.recv(r.fd, rxBuf, BigInt(rxBuf.length), MSG_DONTWAIT));
      if (n <= 0) break;
      const off = r.v6 ? 0 : (rxBuf[0]! & 0xf) * 4; // IPv4 raw sockets see the IP header
      if (n < off + 16) continue;
      const type = rxBuf[off]!;
      const token = Array.from(
        rxBuf.subarray(off + 8, off + 16),
        (b) => b.toString(16).padStart(2, "0"),
      ).join("");
      let types = seen.get(token);
      if (!types) seen.set(token, types = new Set());
      types.add(type);
      for (const w of waiters) if (w.token === token && w.type === type) w.done();
    }
  }
}

function waitIcmp(token: string, type: number, timeoutMs: number): Promise<ProbeResult> {
  drain();
  if (seen.get(token)?.has(type)) return Promise.resolve("ok");
  return new Promise((resolve) => {
    const w = { token, type, done: () => finish("ok") };
    const timer = setTimeout(() => finish("timeout"), timeoutMs);
    const finish = (r: ProbeResult) => {
      clearTimeout(timer);
      waiters.delete(w);
      resolve(r);
    };
    waiters.add(w);
  });
}

function tcpProbe(src: string, dst: string, port: number, timeoutMs: number) {
  return new Promise<ProbeResult>((resolve) => {
    const s = net.connect({ host: dst, port, localAddress: src });
    let got = 0;
    const finish = (r: ProbeResult) => {
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => finish("timeout"), timeoutMs);
    s.on("connect", () => s.write("probe"));
    s.on("data", (d: Uint8Array) => {
      if ((got += d.length) >= 5) finish("ok");
    });
    s.on(
      "error",
      (e: Error & { code?: string }) =>
        finish(e.code === "ECONNREFUSED" ? "refused" : `error: ${e.message}`),
    );
  });
}

async function udpProbe(src: string, dst: string, port: number, timeoutMs: number) {
  const s = Deno.listenDatagram({ transport: "udp", hostname: src, port: 0 });
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await s.send(new TextEncoder().encode("probe"), { transport: "udp", hostname: dst, port });
    const reply = s.receive().then(() => "ok" as const, () => "timeout" as const);
    const late = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), timeoutMs));
    return await Promise.race([reply, late]);
  } finally {
    clearTimeout(timer);
    s.close();
  }
}

const tcpListeners = new Map<number, Deno.TcpListener>();
const udpListeners = new Map<string, Deno.DatagramConn>();

async function echoTcp(c: Deno.TcpConn): Promise<void> {
  const buf = new Uint8Array(4096);
  try {
    for (;;) {
      const n = await c.read(buf);
      if (n === null) break;
      await c.write(buf.subarray(0, n));
    }
  } catch { /* reset by the peer */ }
  try {
    c.close();
  } catch { /* closed */ }
}

function listen(r: ProbeRequest): void {
  const port = r.port!;
  if (r.proto === "tcp" && !tcpListeners.has(port)) {
    const l = Deno.listen({ hostname: "::", port });
    tcpListeners.set(port, l);
    (async () => {
      for await (const c of l) echoTcp(c);
    })();
  }
  const key = `${r.src}|${port}`;
  if (r.proto === "udp" && !udpListeners.has(key)) {
    const l = Deno.listenDatagram({ transport: "udp", hostname: r.src!, port });
    udpListeners.set(key, l);
    (async () => {
      for (;;) {
        const [data, addr] = await l.receive();
        await l.send(data, addr).catch(() => {});
      }
    })().catch(() => {});
  }
}

async function handle(r: ProbeRequest): Promise<ProbeResult> {
  const t = r.timeoutMs ?? 500;
  switch (r.op) {
    case "listen":
      listen(r);
      return "ok";
    case "tcp":
      return await tcpProbe(r.src!, r.dst!, r.port!, t);
    case "udp":
      return await udpProbe(r.src!, r.dst!, r.port!, t);
    case "icmp": {
      sendIcmp(r.src!, r.dst!, r.type!, r.token!);
      const v6 = r.dst!.includes(":");
      const echo = r.type === (v6 ? 128 : 8);
      return echo ? await waitIcmp(r.token!, v6 ? 129 : 0, t) : "sent";
    }
    case "seen":
      return await waitIcmp(r.token!, r.type!, t);
  }
}

if (import.meta.main) {
  if (receivers.some((r) => r.fd < 0)) throw new Error("Cannot open the raw ICMP receivers");
  const poll = setInterval(drain, 2);
  const enc = new TextEncoder();
  const out = (o: unknown) => Deno.stdout.writeSync(enc.encode(JSON.stringify(o) + "\n"));
  out({ id: 0, result: "ok" });
  let buf = "";
  for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!line) continue;
      const r = JSON.parse(line) as ProbeRequest;
      handle(r).then(
        (result) => out({ id: r.id, result }),
        (e) => out({ id: r.id, result: `error: ${e instanceof Error ? e.message : e}` }),
      );
    }
  }
  clearInterval(poll);
  Deno.exit(0);
}
