// The demo's DNS scene: dnsmasq on the external host (203.0.113.10) answers api.example.com
// (→ 203.0.113.10) and www.other.net; a fourth pod, `dns-client`, gets
// examples/policies/dns-fqdn.yaml (DNS for *.example.com only, TCP 80 to api.example.com). The
// scene shows, with real packets through the kernel and cilia's DNS proxy: a connect to the
// address before any lookup is dropped, the allowed name resolves, the other name is REFUSED by
// the proxy, and a connect by name (resolve, then connect) passes. Returns how many outcomes were
// not the expected ones. It starts dnsmasq and stops it before it returns; the pod goes with the
// lab.
import { type DemoLab, EXT, EXT_IP, RUN_DIR } from "./_lab.ts";
import { execCommand } from "../../agent/sys/exec.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const POLICY = "examples/policies/dns-fqdn.yaml";
const color = Deno.stdout.isTerminal() && !Deno.env.get("NO_COLOR");
const paint = (code: string) => (s: string) => color ? `\x1b[${code}m${s}\x1b[0m` : s;
const [green, red, dim, bold] = [paint("32"), paint("31"), paint("2"), paint("1")];
const say = (s = "") => console.log(s);

/** Run in the pod: resolve NAME with the DNS server (unless it is an address), then connect. */
const CONNECT = `
const [host, port, server] = Deno.args;
let ip = host;
try {
  if (!/^[0-9.]+$/.test(host)) {
    ip = (await Deno.resolveDns(host, "A", { nameServer: { ipAddr: server, port: 53 } }))[0];
  }
  const c = await Promise.race([
    Deno.connect({ hostname: ip, port: Number(port) }),
    new Promise((_, rej) => setTimeout(() => rej(new Error("timed out")), 1500)),
  ]);
  await c.write(new TextEncoder().encode("probe"));
  const buf = new Uint8Array(5);
  const n = await c.read(buf);
  c.close();
  console.log(JSON.stringify({ ok: n === 5, ip }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, ip, error: String(e?.message ?? e) }));
}
Deno.exit(0);
`;

async function dig(netns: string, name: string): Promise<{ status: string; ips: string[] }> {
  const r = await execCommand([
    ...["ip", "netns", "exec", netns, "dig", "+time=2", "+tries=1", `@${EXT_IP}`, name, "A"],
  ]);
  const status = /status: (\w+)/.exec(r.stdout)?.[1] ?? "no answer";
  const ips = [...r.stdout.matchAll(/^\S+\s+\d+\s+IN\s+A\s+(\S+)$/gm)].map((m) => m[1]!);
  return { status, ips };
}

async function connect(netns: string, host: string, port: number) {
  const r = await execCommand([
    ...["ip", "netns", "exec", netns, Deno.execPath(), "run", "--quiet", "-A", "--no-config"],
    ...[`${RUN_DIR}/dns_connect.ts`, host, String(port), EXT_IP],
  ]);
  return JSON.parse(r.stdout.trim().split("\n").at(-1) || "{}") as {
    ok?: boolean;
    ip?: string;
    error?: string;
  };
}

export async function dnsScene(lab: DemoLab, check: () => void): Promise<number> {
  say();
  say(bold("  DNS: names judged by cilia's DNS proxy, addresses allowed by name (toFQDNs)"));
  await Deno.writeTextFile(`${RUN_DIR}/dns_connect.ts`, CONNECT);
  const dnsmasq = new Deno.Command("ip", {
    args: [
      ...["netns", "exec", EXT, "dnsmasq", "--no-daemon", "--port=53", "--bind-interfaces"],
      ...[`--listen-address=${EXT_IP}`, "--no-resolv", "--no-hosts", "--local-ttl=60"],
      ...[`--address=/api.example.com/${EXT_IP}`, "--address=/www.other.net/203.0.113.20"],
      `--pid-file=${RUN_DIR}/dnsmasq.pid`,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const pod = await lab.addPod("dns-client", { app: "dns-client" });
    say(`  ${"pod".padEnd(11)}dns-client ${pod.ip} app=dns-client identity ${pod.identity}`);
    say(
      `  ${"dns".padEnd(11)}dnsmasq on ${EXT} at ${EXT_IP}: api.example.com, www.other.net`,
    );
    say(`  ${"policy".padEnd(11)}bin/cilia policy import ${POLICY}: ${await lab.importPolicy(
      `${ROOT}${POLICY}`,
    )}`);
    let wrong = 0;
    const line = (what: string, ok: boolean, result: string, why = "") => {
      if (!ok) wrong++;
      const shown = ok ? result : red(`${result}  UNEXPECTED`);
      say(`  ${what.padEnd(52)}${shown}${why ? `  ${dim(why)}` : ""}`);
    };
    check();
    const before = await connect(pod.netns, EXT_IP, 80);
    line(
      `dns-client → ${EXT_IP}   TCP 80 (no lookup yet)`,
      before.ok === false,
      before.ok ? green("allowed") : red("dropped"),
      "only api.example.com's addresses may be reached, and none is known",
    );
    check();
    const allowedName = await dig(pod.netns, "api.example.com");
    const learned = allowedName.status === "NOERROR" && allowedName.ips.includes(EXT_IP);
    line(
      "dns-client → DNS      A api.example.com",
      learned,
      `${allowedName.status} ${allowedName.ips.join(",")}`,
      "forwarded to dnsmasq; the address is allowed before the answer is released",
    );
    check();
    const refused = await dig(pod.netns, "www.other.net");
    line(
      "dns-client → DNS      A www.other.net",
      refused.status === "REFUSED",
      refused.status === "REFUSED" ? red("REFUSED") : refused.status,
      "the DNS rule allows *.example.com only; never sent to dnsmasq",
    );
    check();
    const byName = await connect(pod.netns, "api.example.com", 80);
    line(
      "dns-client → api.example.com TCP 80 (by name)",
      byName.ok === true,
      byName.ok ? green(`allowed (${byName.ip})`) : `dropped ${byName.error ?? ""}`,
    );
    return wrong;
  } finally {
    try {
      dnsmasq.kill("SIGTERM");
    } catch { /* exited */ }
    await dnsmasq.status;
  }
}
