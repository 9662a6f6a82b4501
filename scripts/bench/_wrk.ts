// What the HTTP benchmarks (bench l7, bench lb) share: a one-thread haproxy that answers `200 ok`
// itself (so the origin is never the bottleneck), waiting for it to answer, and reading wrk's
// report.
import type { Lab } from "../../tests/helpers/netns.ts";

/** haproxy's configuration for the origin: `200 ok` on every port in `ports`. */
export function haproxyOrigin(ports: readonly number[]): string {
  return `global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend origin
${
    ports.map((p) => `  bind 0.0.0.0:${p}\n`).join("")
  }  http-request return status 200 content-type text/plain string "ok"
`;
}

/** The HTTP status curl got for `url` from `netns` ("000" when nothing answered). */
export async function httpCode(lab: Lab, netns: string, url: string, seconds = 1) {
  const r = await lab.exec(netns, [
    ...["curl", "-s", "-m", String(seconds), "-o", "/dev/null", "-w", "%{http_code}", url],
  ]);
  return r.stdout.trim();
}

/** Waits until `url` answers 200 from `netns` (100 tries, `pauseMs` apart); throws `failure`. */
export async function waitHttp200(
  lab: Lab,
  netns: string,
  url: string,
  failure: string,
  pauseMs = 100,
): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await httpCode(lab, netns, url) === "200") return;
    await new Promise((r) => setTimeout(r, pauseMs));
  }
  throw new Error(failure);
}

/** What wrk counted: requests per second (= connections with Connection: close), errors. */
export interface WrkCounts {
  perSec: number;
  requests: number;
  errors: number;
}

/** Parses wrk's report: requests/s, and socket errors plus non-2xx answers. */
export function parseWrk(out: string): WrkCounts {
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const total = /(\d+) requests in/.exec(out);
  if (!rps || !total) {
    throw new Error(`No "Requests/sec" in the wrk report: ${JSON.stringify(out)}`);
  }
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  const errors = (sock ? sock.slice(1).reduce((a, x) => a + Number(x), 0) : 0) +
    (non2xx ? Number(non2xx[1]) : 0);
  return { perSec: Number(rps[1]), requests: Number(total[1]), errors };
}

const UNIT_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000 };

/** The `q`% latency of a `wrk --latency` report, in ms. */
export function wrkLatencyMs(out: string, q: string): number {
  const m = out.match(new RegExp(`^\\s*${q}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, "m"));
  if (!m) throw new Error(`No ${q}% latency in the wrk report: ${out}`);
  return Number(m[1]) * UNIT_MS[m[2]!]!;
}
