// The monitor bench's event producer: runs a pinned tc program on a packet with
// BPF_PROG_TEST_RUN (libbpf `bpf_prog_test_run_opts`, Deno FFI) at a paced rate, so every run
// goes through the real lxc program and emits its real events. Started by monitor_bench.ts under
// `nsenter --net=<node>` so `ifindex` (the __sk_buff context) names the node's lxc veth.
// Usage: _event_producer.ts PROG_PATH IFINDEX PACKET_HEX RUNS_PER_SEC RUNS (0 per sec: unpaced).
// Prints {"runs", "ms", "retval"} as one JSON line.

const [prog, ifindex, hex, rateArg, runsArg] = Deno.args;
const lib = Deno.dlopen("libbpf.so.1", {
  bpf_obj_get: { parameters: ["buffer"], result: "i32" },
  bpf_prog_test_run_opts: { parameters: ["i32", "buffer"], result: "i32" },
});
const fd = lib.symbols.bpf_obj_get(new TextEncoder().encode(`${prog}\0`));
if (fd < 0) throw new Error(`Cannot open the pinned program "${prog}": error ${-fd}`);
const packet = new Uint8Array(hex!.match(/../g)!.map((b) => parseInt(b, 16)));
const ctx = new Uint8Array(192); // struct __sk_buff; only ifindex (offset 40) is set
new DataView(ctx.buffer).setUint32(40, Number(ifindex), true);
const opts = new Uint8Array(80); // struct bpf_test_run_opts (libbpf 1.1)
const ov = new DataView(opts.buffer);
const ptr = (b: Uint8Array) => BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b)));
ov.setBigUint64(0, 80n, true);
ov.setBigUint64(8, ptr(packet), true);
ov.setUint32(24, packet.length, true);
ov.setBigUint64(32, ptr(ctx), true);
ov.setUint32(48, ctx.length, true);

function run(n: number): void {
  ov.setInt32(60, n, true);
  const r = lib.symbols.bpf_prog_test_run_opts(fd, opts);
  if (r !== 0) throw new Error(`bpf_prog_test_run_opts failed: ${r}`);
}

const rate = Number(rateArg), runs = Number(runsArg);
const slotMs = 2;
const chunk = rate > 0 ? Math.max(1, Math.round(rate * slotMs / 1000)) : 2000;
const start = performance.now();
let done = 0;
while (done < runs) {
  const n = Math.min(chunk, runs - done);
  run(n);
  done += n;
  if (rate > 0) {
    const wait = start + done / rate * 1000 - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
}
const ms = performance.now() - start;
console.log(JSON.stringify({ runs: done, ms, retval: ov.getUint32(56, true) }));
lib.close();
