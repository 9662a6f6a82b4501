// Kubernetes `Service` (v1) and `EndpointSlice` (discovery.k8s.io/v1) YAML → service records:
// one record per Service port (frontend clusterIP:port/protocol), its backends the ready
// endpoints of the slices labelled `kubernetes.io/service-name: <name>` in the same namespace,
// with the slice port of the same name and protocol. Pure; errors name the document and the
// field path (`spec.ports[0].port`). NodePort and LoadBalancer keep each port's `nodePort`
// (none: the agent allocates one); a LoadBalancer's addresses are the IPs of
// `status.loadBalancer.ingress`. `sessionAffinity: ClientIP` keeps its timeout; endpoints with
// `conditions.terminating` (and serving) become terminating backends; the Service's selector and
// labels are kept for toServices in policies. Not yet: IPv6,
// ExternalName.
import { parseAllDocuments } from "yaml";
import { z } from "zod";
import { ServiceError } from "./manager.ts";
import type { ServiceInput } from "./spec.ts";

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
    clusterIP: z.string().min(1),
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
});

const K8sSlice = z.object({
  apiVersion: z.literal("discovery.k8s.io/v1"),
  kind: z.literal("EndpointSlice"),
  metadata: Meta,
  addressType: z.literal("IPv4", { message: 'Unsupported addressType: only "IPv4" yet' }),
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
  return services.flatMap((s) => {
    const ns = s.metadata.namespace;
    const mine = slices.filter((e) =>
      e.metadata.namespace === ns &&
      e.metadata.labels["kubernetes.io/service-name"] === s.metadata.name
    );
    return s.spec.ports.map((p) => {
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
      const lbIps = (s.status?.loadBalancer.ingress ?? []).flatMap((x) => x.ip ? [x.ip] : []);
      return {
        name: `${ns}/${s.metadata.name}`,
        type: s.spec.type,
        ...(s.spec.type !== "ClusterIP" && p.nodePort ? { nodePort: p.nodePort } : {}),
        ...(s.spec.type === "LoadBalancer" && lbIps.length > 0 ? { loadBalancerIPs: lbIps } : {}),
        frontend: { ip: s.spec.clusterIP, port: p.port, protocol: p.protocol },
        algorithm: "random" as const,
        ...(s.spec.sessionAffinity === "ClientIP"
          ? {
            sessionAffinity: "ClientIP" as const,
            affinityTimeoutSeconds: s.spec.sessionAffinityConfig?.clientIP?.timeoutSeconds ??
              10800,
          }
          : {}),
        backends: unique,
        // For toServices: a selector stands for the backends' pods, none for their addresses.
        ...(s.spec.selector && Object.keys(s.spec.selector).length > 0
          ? { selector: s.spec.selector }
          : {}),
        ...(Object.keys(s.metadata.labels).length > 0 ? { labels: s.metadata.labels } : {}),
      };
    });
  });
}
