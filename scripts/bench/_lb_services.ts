// The services of `bench lb` and kube-proxy's iptables rules for them (pure: no I/O). N ClusterIP
// services on ORIGIN_PORT; the two measured ones sit in the middle of the list (and so of
// KUBE-SERVICES, the average walk), on one address, with the real server as their one backend:
// ORIGIN_PORT (HTTP, wrk → haproxy) and CONN_PORT (the lean connection tool, _connrate.c); every
// other has two decoy backends that are never reached. kubeProxyRules() writes what kube-proxy's iptables mode
// writes into the nat table for them (PREROUTING/OUTPUT → KUBE-SERVICES → KUBE-SVC-* →
// KUBE-SEP-* with statistic probabilities, KUBE-NODEPORTS as the last rule, KUBE-POSTROUTING
// masquerade), no rule of the bench's own: the baseline is neither hobbled nor helped.
import type { ServiceSpec } from "../../agent/service/spec.ts";

export const ORIGIN_PORT = 8080;
/** The lean connection tool's port (_connrate.c), on the same service address. */
export const CONN_PORT = 9080;
/** Pod CIDR of the lab (tests/helpers/netns.ts): kube-proxy's --cluster-cidr. */
const CLUSTER_CIDR = "10.200.0.0/16";

/** The i-th service's address: 10.96.0.0/16 from .1 (i < 65,000). */
const vipOf = (i: number) => `10.96.${(i + 1) >> 8}.${(i + 1) & 0xff}`;
/** Two decoy backends per other service (never reached). */
const decoy = (i: number, k: number) => `10.${210 + k}.${i >> 8}.${i & 0xff}`;

/**
 * n services (0, or at least 2); the measured ones (indexes (n - 1)/2 and the next, the middle
 * of KUBE-SERVICES) have the real server: vip:ORIGIN_PORT and vip:CONN_PORT.
 */
export function benchServices(n: number, server: string): { specs: ServiceSpec[]; vip: string } {
  if (n === 1 || !Number.isInteger(n) || n < 0) {
    throw new RangeError(`Invalid service count ${n}: expected 0 or an integer ≥ 2`);
  }
  const mid = Math.floor((n - 1) / 2);
  const specs = Array.from({ length: n }, (_, i): ServiceSpec => {
    const port = i === mid + 1 ? CONN_PORT : ORIGIN_PORT;
    return {
      id: i + 1,
      type: "ClusterIP",
      frontend: { ip: vipOf(i === mid + 1 ? mid : i), port, protocol: "TCP" },
      algorithm: "random",
      backends: i === mid || i === mid + 1
        ? [{ ip: server, port, weight: 1 }]
        : [0, 1].map((k) => ({ ip: decoy(i, k), port, weight: 1 })),
    };
  });
  return { specs, vip: vipOf(mid) };
}

/** kube-proxy's chain names: 16 characters of a hash, as KUBE-SVC-XXXXXXXXXXXXXXXX. */
const chainId = (kind: string, i: number, k = 0) =>
  `KUBE-${kind}-${(((i + 1) * 2654435761 + k * 40503) >>> 0).toString(16).padStart(8, "0")}` +
  `${(i * 7 + k).toString(36).toUpperCase().padStart(8, "X")}`;

/** kube-proxy's iptables-restore input (nat table) for the services, nothing of the bench's own. */
export function kubeProxyRules(specs: readonly ServiceSpec[]): string {
  const chains = [
    ":KUBE-SERVICES - [0:0]",
    ":KUBE-NODEPORTS - [0:0]",
    ":KUBE-POSTROUTING - [0:0]",
    ":KUBE-MARK-MASQ - [0:0]",
  ];
  const portal = '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES';
  const rules = [
    `-A PREROUTING ${portal}`,
    `-A OUTPUT ${portal}`,
    '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
    "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
    "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
    '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" ' +
    "-j MASQUERADE --random-fully",
  ];
  const svcRules: string[] = [];
  specs.forEach((s, i) => {
    const svc = chainId("SVC", i), f = s.frontend, name = `bench/svc-${i}:http`;
    const dst = `-d ${f.ip}/32 -p tcp -m tcp --dport ${f.port}`;
    chains.push(`:${svc} - [0:0]`);
    rules.push(`-A KUBE-SERVICES ${dst} -m comment --comment "${name} cluster IP" -j ${svc}`);
    svcRules.push(
      `-A ${svc} ! -s ${CLUSTER_CIDR} ${dst} -m comment --comment "${name} cluster IP" ` +
        "-j KUBE-MARK-MASQ",
    );
    s.backends.forEach((b, k) => {
      const sep = chainId("SEP", i, k), left = s.backends.length - k;
      chains.push(`:${sep} - [0:0]`);
      const stat = left > 1
        ? `-m statistic --mode random --probability ${(1 / left).toFixed(11)} `
        : "";
      svcRules.push(
        `-A ${svc} -m comment --comment "${name} -> ${b.ip}:${b.port}" ${stat}-j ${sep}`,
        `-A ${sep} -s ${b.ip}/32 -m comment --comment "${name}" -j KUBE-MARK-MASQ`,
        `-A ${sep} -p tcp -m comment --comment "${name}" -m tcp -j DNAT --to-destination ` +
          `${b.ip}:${b.port}`,
      );
    });
  });
  rules.push(
    '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be ' +
      'the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
  );
  return ["*nat", ...chains, ...rules, ...svcRules, "COMMIT", ""].join("\n");
}
