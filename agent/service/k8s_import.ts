// Kubernetes `Service` (v1) and `EndpointSlice` (discovery.k8s.io/v1) YAML → service records:
// one record per Service port and cluster IP (frontend clusterIP:port/protocol; a dual-stack
// Service's `clusterIPs` give an IPv4 and an IPv6 record, in the order of `ipFamilies`), its
// backends the ready endpoints of the slices labelled `kubernetes.io/service-name: <name>` in the
// same namespace whose `addressType` is the cluster IP's family (IPv4 or IPv6), with the slice
// port of the same name and protocol. Pure; errors name the document and the
// field path (`spec.ports[0].port`). NodePort and LoadBalancer keep each port's `nodePort`
// (none: the agent allocates one; a dual-stack Service's two records share it); a
// LoadBalancer's addresses are the IPs of `status.loadBalancer.ingress` of the record's family. `sessionAffinity: ClientIP` keeps its timeout; endpoints with
// `conditions.terminating` (and serving) become terminating backends; the Service's selector and
// labels are kept for toServices in policies. Not yet: ExternalName, headless Services,
// `addressType: FQDN`.
import { parseAllDocuments } from "yaml";
import { z } from "zod";
import { ServiceError } from "./manager.ts";
import { ipFamily, type ServiceInput } from "./spec.ts";

const Meta = z.object({
  name: z.string().min(1),
  namespace: z.string().min(1).default("default"),
  labels: z.record(z.string(), z.string()).default({}),
});
const Protocol = z.enum(["TCP", "UDP"]).default("TCP");

const K8sService = z.object({
  apiVersion: z.literal("v1"),
  kind: z.literal("Service"),
  metadata: Meta,
  spec: z.object({
    selector: z.record(z.string(), z.string()).optional(),
    type: z.enum(["ClusterIP", "NodePort", "LoadBalancer"], {
      message: 'Unsupported service type: expected "ClusterIP", "NodePort" or "LoadBalancer"',
    }).default("ClusterIP"),
    clusterIP: z.string().min(1).optional(),
    /** Dual-stack: one address per family; the first is `clusterIP`. */
    clusterIPs: z.array(z.string().min(1)).min(1).max(2).optional(),
    ipFamilies: z.array(z.enum(["IPv4", "IPv6"], {
      message: 'Unsupported ipFamilies entry: expected "IPv4" or "IPv6"',
    })).min(1).max(2).optional(),
    sessionAffinity: z.enum(["None", "ClientIP"], {
      message: 'Unsupported sessionAffinity: expected "None" or "ClientIP"',
    }).default("None"),
    sessionAffinityConfig: z.object({
      clientIP: z.object({
        timeoutSeconds: z.number().int().min(1).max(86400).optional(),
      }).optional(),
    }).optional(),
    ports: z.array(z.object({
      name: z.string().default(""),
      port: z.number().int().min(1).max(65535),
      targetPort: z.union([z.number().int().min(1).max(65535), z.string()]).optional(),
      nodePort: z.number().int().min(1).max(65535).optional(),
      protocol: Protocol,
    })).min(1),
  }),
  status: z.object({
    loadBalancer: z.object({
      ingress: z.array(z.object({ ip: z.string().optional() })).default([]),
    }).default({ ingress: [] }),
  }).optional(),
}).superRefine((s, ctx) => {
  const issue = (path: (string | number)[], message: string) =>
    ctx.addIssue({ code: "custom", path: ["spec", ...path], message });
  const { clusterIP, clusterIPs, ipFamilies } = s.spec;
  if (clusterIP === undefined && clusterIPs === undefined) {
    return issue(["clusterIP"], "Missing clusterIP: expected an IPv4 or IPv6 address");
  }
  if (clusterIP !== undefined && clusterIPs !== undefined && clusterIPs[0] !== clusterIP) {
    return issue(["clusterIPs", 0], `Invalid clusterIPs[0]: expected the clusterIP "${clusterIP}"`);
  }
  const ips = clusterIPs ?? [clusterIP!];
  const families = ips.map((ip) => ipFamily(ip));
  for (const [i, f] of families.entries()) {
    if (f === undefined) {
      return issue(
        clusterIPs ? ["clusterIPs", i] : ["clusterIP"],
        `Invalid cluster IP "${ips[i]}": expected an IPv4 or IPv6 address`,
      );
    }
  }
  if (families.length === 2 && families[0] === families[1]) {
    return issue(["clusterIPs", 1], "Invalid clusterIPs: expected one IPv4 and one IPv6 address");
  }
  for (const [i, fam] of (ipFamilies ?? []).entries()) {
    if (i < families.length && fam !== `IPv${families[i]}`) {
      return issue(
        ["ipFamilies", i],
        `Invalid ipFamilies[${i}] "${fam}": the cluster IP "${ips[i]}" is IPv${families[i]}`,
      );
    }
  }
});

const K8sSlice = z.object({
  apiVersion: z.literal("discovery.k8s.io/v1"),
  kind: z.literal("EndpointSlice"),
  metadata: Meta,
  addressType: z.enum(["IPv4", "IPv6"], {
    message: 'Unsupported addressType: expected "IPv4" or "IPv6"',
  }),
  ports: z.array(z.object({
    name: z.string().default(""),
    port: z.number().int().min(1).max(65535),
    protocol: Protocol,
  })).default([]),
  endpoints: z.array(z.object({
    addresses: z.array(z.string()).min(1),
    conditions: z.object({
      ready: z.boolean().optional(),
      serving: z.boolean().optional(),
      terminating: z.boolean().optional(),
    }).default({}),
  })).default([]),
}).superRefine((e, ctx) => {
  // Every address has the slice's family (Kubernetes validates the same).
  e.endpoints.forEach((ep, i) =>
    ep.addresses.forEach((ip, j) => {
      if (`IPv${ipFamily(ip)}` === e.addressType) return;
      ctx.addIssue({
        code: "custom",
        path: ["endpoints", i, "addresses", j],
        message: `Invalid address "${ip}": expected an ${e.addressType} address (addressType)`,
      });
    })
  );
});

const located = (doc: number, err: z.ZodError) => {
  const i = err.issues[0]!;
  const path = i.path.map((p) => typeof p === "number" ? `[${p}]` : `.${String(p)}`).join("")
    .replace(/^\./, "");
  return new ServiceError("invalid", `Invalid document ${doc}: ${path}: ${i.message}`);
};

export function importKubernetesServices(text: string): ServiceInput[] {
  const services: z.output<typeof K8sService>[] = [];
  const slices: z.output<typeof K8sSlice>[] = [];
  parseAllDocuments(text).forEach((d, i) => {
    if (d.errors.length > 0) {
      throw new ServiceError("invalid", `Invalid document ${i + 1}: ${d.errors[0]!.message}`);
    }
    const v = d.toJS() as { kind?: unknown } | null;
    if (v === null) return;
    const schema = v.kind === "EndpointSlice" ? K8sSlice : K8sService;
    const r = schema.safeParse(v);
    if (!r.success) throw located(i + 1, r.error);
    if (r.data.kind === "Service") services.push(r.data);
    else slices.push(r.data);
  });
  return services.flatMap((s) =>
    (s.spec.clusterIPs ?? [s.spec.clusterIP!]).flatMap((ip) =>
      s.spec.ports.map((p) => record(s, ip, p, slices))
    )
  );
}

type Service = z.output<typeof K8sService>;

/** One record: a Service port on one of its cluster IPs, with the slices of that family. */
function record(
  s: Service,
  clusterIP: string,
  p: Service["spec"]["ports"][number],
  slices: readonly z.output<typeof K8sSlice>[],
): ServiceInput {
  const ns = s.metadata.namespace;
  const family = `IPv${ipFamily(clusterIP)}`;
  const mine = slices.filter((e) =>
    e.metadata.namespace === ns && e.addressType === family &&
    e.metadata.labels["kubernetes.io/service-name"] === s.metadata.name
  );
  const backends = mine.flatMap((e) => {
    const sp = e.ports.find((x) => x.name === p.name && x.protocol === p.protocol);
    if (!sp) return [];
    // Ready endpoints, and terminating ones still serving (they finish their connections and
    // get no new ones); an endpoint that is neither is left out.
    return e.endpoints.flatMap((ep) => {
      const { ready, serving, terminating } = ep.conditions;
      if (terminating === true) {
        if (serving === false) return [];
        return ep.addresses.map((ip) => ({ ip, port: sp.port, weight: 1, terminating }));
      }
      if (ready === false) return [];
      return ep.addresses.map((ip) => ({ ip, port: sp.port, weight: 1 }));
    });
  });
  const unique = [...new Map(backends.map((b) => [`${b.ip}:${b.port}`, b])).values()];
  const lbIps = (s.status?.loadBalancer.ingress ?? []).flatMap((x) =>
    x.ip && `IPv${ipFamily(x.ip)}` === family ? [x.ip] : []
  );
  return {
    name: `${ns}/${s.metadata.name}`,
    type: s.spec.type,
    ...(s.spec.type !== "ClusterIP" && p.nodePort ? { nodePort: p.nodePort } : {}),
    ...(s.spec.type === "LoadBalancer" && lbIps.length > 0 ? { loadBalancerIPs: lbIps } : {}),
    frontend: { ip: clusterIP, port: p.port, protocol: p.protocol },
    algorithm: "random" as const,
    ...(s.spec.sessionAffinity === "ClientIP"
      ? {
        sessionAffinity: "ClientIP" as const,
        affinityTimeoutSeconds: s.spec.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? 10800,
      }
      : {}),
    backends: unique,
    // For toServices: a selector stands for the backends' pods, none for their addresses.
    ...(s.spec.selector && Object.keys(s.spec.selector).length > 0
      ? { selector: s.spec.selector }
      : {}),
    ...(Object.keys(s.metadata.labels).length > 0 ? { labels: s.metadata.labels } : {}),
  };
}
