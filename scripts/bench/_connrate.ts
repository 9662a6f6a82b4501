// The lean new-connection load tool of `bench lb` (_connrate.c): built with the machine's clang
// into a lab's directory, and its client's report read. It measures real TCP connections on real
// sockets (connect, 1 byte each way, the server's close), with so little user-space work per
// connection that the rate shows the kernel's path, datapath included. No I/O but the build.

const SOURCE = new URL("./_connrate.c", import.meta.url).pathname;

/** Compiles _connrate.c into `dir`; the binary's path. */
export async function buildConnrate(dir: string): Promise<string> {
  const out = `${dir}/connrate`;
  const r = await new Deno.Command("clang", {
    args: ["-O2", "-Wall", "-o", out, SOURCE],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!r.success) {
    throw new Error(
      `Cannot build "${SOURCE}": clang exited with status ${r.code}: ` +
        new TextDecoder().decode(r.stderr).trim(),
    );
  }
  return out;
}

/** What one client run measured. */
export interface ConnrateResult {
  /** Completed connections per second (answer byte and the server's FIN received). */
  perSec: number;
  connections: number;
  /** Refused, reset or stuck (2 s) connections. */
  errors: number;
  /** The client's CPU time (user + system), its packets' softirq work included. */
  cpuSeconds: number;
}

/** Reads the client's one JSON line. */
export function parseConnrate(out: string): ConnrateResult {
  const line = out.split("\n").find((l) => l.startsWith('{"connections"'));
  if (!line) throw new Error(`No report in the connrate output: ${JSON.stringify(out)}`);
  const j = JSON.parse(line) as {
    connections: number;
    errors: number;
    seconds: number;
    cpuSeconds: number;
  };
  if (!(j.seconds > 0)) throw new Error(`Invalid connrate report: ${line}`);
  return {
    perSec: j.connections / j.seconds,
    connections: j.connections,
    errors: j.errors,
    cpuSeconds: j.cpuSeconds,
  };
}
