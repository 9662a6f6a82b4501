// Kubernetes `Service` (v1) and `EndpointSlice` (discovery.k8s.io/v1) YAML → service records:
// one record per Service port (frontend clusterIP:port/protocol), its backends the ready
// endpoints of the slices labelled `kubernetes.io/service-name: <name>` in the same namespace,
// with the slice port of the same name and protocol. Pure; errors name the document and the
// field path (`spec.ports[0].port`). Not yet: NodePort/LoadBalancer, sessionAffinity, IPv6.
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
    type: z.literal("ClusterIP", {
      message: 'Unsupported service type: only "ClusterIP" is supported yet',
    }).default("ClusterIP"),
    clusterIP: z.string().min(1),
    sessionAffinity: z.literal("None", {
      message: 'Unsupported sessionAffinity: only "None" is supported yet',
    }).default("None"),
    ports: z.array(z.object({
      name: z.string().default(""),
      port: z.number().int().min(1).max(65535),
      targetPort: z.union([z.number().int().min(1).max(65535), z.string()]).optional(),
      protocol: Protocol,
    })).min(1),
  }),
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
    conditions: z.object({ ready: z.boolean().optional() }).default({}),
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
        return e.endpoints.filter((ep) => ep.conditions.ready !== false)
          .flatMap((ep) => ep.addresses.map((ip) => ({ ip, port: sp.port, weight: 1 })));
      });
      const unique = [...new Map(backends.map((b) => [`${b.ip}:${b.port}`, b])).values()];
      return {
        name: `${ns}/${s.metadata.name}`,
        type: "ClusterIP" as const,
        frontend: { ip: s.spec.clusterIP, port: p.port, protocol: p.protocol },
        algorithm: "random" as const,
        backends: unique,
      };
    });
  });
}
