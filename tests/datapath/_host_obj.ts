// Shared by the underlay programs' single-packet tests (netdev_prog_test.ts,
// netdev_native_test.ts): host.o built and loaded into a private bpffs for `bpftool prog run`, and
// IPv4 frames with correct checksums.
import { BpfTool } from "../../agent/datapath/bpftool.ts";
import { buildObject } from "../../agent/datapath/build.ts";
import { assert } from "./_fixture.ts";

export const MAC = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

function sum16(bytes: number[]): number {
  let s = 0;
  for (let i = 0; i < bytes.length; i += 2) s += (bytes[i]! << 8) | (bytes[i + 1] ?? 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}
/** The Internet checksum of bytes (0 over a whole header that carries a correct one). */
export const csum = (bytes: number[]) => ~sum16(bytes) & 0xffff;

/** Ethernet + IPv4 (checksummed) + L4, its checksum filled in for TCP (pseudo header) and ICMP. */
export function packet(src: number[], dst: number[], proto: number, l4: number[]): number[] {
  const len = 20 + l4.length;
  const ip = [0x45, 0, len >> 8, len & 0xff, 0, 1, 0x40, 0, 64, proto, 0, 0, ...src, ...dst];
  const c = csum(ip);
  ip[10] = c >> 8;
  ip[11] = c & 0xff;
  const body = [...l4];
  const at = proto === 6 ? 16 : proto === 1 ? 2 : -1;
  if (at >= 0) {
    const pseudo = proto === 6 ? [...src, ...dst, 0, 6, l4.length >> 8, l4.length & 0xff] : [];
    const t = csum([...pseudo, ...body]);
    body[at] = t >> 8;
    body[at + 1] = t & 0xff;
  }
  return [...MAC, 0x08, 0x00, ...ip, ...body];
}

/** A TCP SYN header (checksum left to packet()). */
export const tcpSyn = (sport: number, dport: number) => [
  ...[sport >> 8, sport & 0xff, dport >> 8, dport & 0xff, 0, 0, 0, 1, 0, 0, 0, 0],
  ...[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0],
];

export interface HostObject {
  /** A scratch directory for packet files (removed afterwards). */
  dir: string;
  /** The private bpffs: programs under p/, maps under m/. */
  bpffs: string;
  bpftool: BpfTool;
}

/** Builds host.o, loads it into a private bpffs, runs fn, then unmounts and removes it all. */
export async function withHostObject(
  prefix: string,
  fn: (h: HostObject) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  const bpffs = `${dir}/bpf`;
  await Deno.mkdir(bpffs);
  const bpftool = new BpfTool();
  let mounted = false;
  try {
    const obj = await buildObject({ buildDir: `${dir}/build`, name: "host" });
    const m = await new Deno.Command("mount", { args: ["-t", "bpf", "bpf", bpffs] }).output();
    assert(m.success, "mount a private bpffs");
    mounted = true;
    await bpftool.run(["prog", "loadall", obj.path, `${bpffs}/p`, "pinmaps", `${bpffs}/m`]);
    await fn({ dir, bpffs, bpftool });
  } finally {
    if (mounted) await new Deno.Command("umount", { args: [bpffs] }).output();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
