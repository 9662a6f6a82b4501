// The services of `bench lb` and kube-proxy's iptables rules for them (pure: no I/O). N ClusterIP
// services on ORIGIN_PORT; the measured one sits in the middle of the list (and so of
// KUBE-SERVICES, the average walk) with the real server as its one backend, every other has two
// decoy backends that are never reached. kubeProxyRules() writes what kube-proxy's iptables mode
// writes into the nat table for them (PREROUTING/OUTPUT → KUBE-SERVICES → KUBE-SVC-* →
// KUBE-SEP-* with statistic probabilities, KUBE-NODEPORTS as the last rule, KUBE-POSTROUTING
// masquerade), no rule of the bench's own: the baseline is neither hobbled nor helped.
import type { ServiceSpec } from "../../agent/service/spec.ts";

export const ORIGIN_PORT = 8080;
/** Pod CIDR of the lab (tests/helpers/netns.ts): kube-proxy's --cluster-cidr. */
const CLUSTER_CIDR = "10.200.0.0/16";

/** The i-th service's address: 10.96.0.0/16 from .1 (i < 65,000). */
const vipOf = (i: number) => `10.96.${(i + 1) >> 8}.${(i + 1) & 0xff}`;
/** Two decoy backends per other service (never reached). */
const decoy = (i: number, k: number) => `10.${210 + k}.${i >> 8}.${i & 0xff}`;

/** n services; the measured one (index n/2, the middle of KUBE-SERVICES) has the real server. */
export function benchServices(n: number, server: string): { specs: ServiceSpec[]; vip: string } {
  const mid = Math.floor(n / 2);
  const specs = Array.from({ length: n }, (_, i): ServiceSpec => ({
    id: i + 1,
    type: "ClusterIP",
    frontend: { ip: vipOf(i), port: ORIGIN_PORT, protocol: "TCP" },
    algorithm: "random",
    backends: i === mid
      ? [{ ip: server, port: ORIGIN_PORT, weight: 1 }]
      : [0, 1].map((k) => ({ ip: decoy(i, k), port: ORIGIN_PORT, weight: 1 })),
  }));
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
