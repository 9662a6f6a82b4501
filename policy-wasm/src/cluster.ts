// A simulated cluster for offline evaluation (scenarios, `cilia policy trace`, the browser): named
// endpoints with labels, namespaces and IPs; identities allocated the way the agent allocates
// them (one per distinct identity-label set from 256, reserved ones, CIDR identities from 2^24
// for the prefixes policies name); all of it loaded into a PolicyEngine. This module is browser
// compatible.

import type { PolicyEngine } from "./engine.ts";
import type { EngineOptions, IdentitySpec, NamedPort, PolicySpec } from "./ir.ts";
import {
  cidrIdentityLabels,
  cidrPrefixesOf,
  type LabelFilter,
  LOCAL_IDENTITY_BASE,
  podIdentityLabels,
  RESERVED_IDENTITIES,
} from "./labels.ts";
import { parseAddress } from "./cidr.ts";

export interface NamespaceInput {
  name: string;
  labels?: Record<string, string> | undefined;
}

export interface EndpointInput {
  name: string;
  namespace?: string | undefined;
  labels?: Record<string, string> | undefined;
  ip?: string | undefined;
  ipv6?: string | undefined;
  ports?: NamedPort[] | undefined;
  serviceAccount?: string | undefined;
}

export interface SimEndpoint {
  name: string;
  namespace: string;
  /** The engine's endpoint id (1-based position). */
  id: number;
  identity: number;
  labels: string[];
  ips: string[];
  ports: NamedPort[];
}

export class SimCluster {
  readonly endpoints: SimEndpoint[] = [];
  readonly identities: IdentitySpec[] = [...RESERVED_IDENTITIES];
  readonly clusterName: string;
  #byName = new Map<string, SimEndpoint>();

  constructor(
    opts: {
      namespaces?: NamespaceInput[];
      endpoints: EndpointInput[];
      clusterName?: string;
      labelFilter?: LabelFilter;
    },
  ) {
    this.clusterName = opts.clusterName ?? "default";
    const nsLabels = new Map((opts.namespaces ?? []).map((n) => [n.name, n.labels ?? {}]));
    const byLabels = new Map<string, number>();
    opts.endpoints.forEach((e, i) => {
      const namespace = e.namespace ?? "default";
      const labels = podIdentityLabels({
        labels: e.labels ?? {},
        namespace,
        namespaceLabels: nsLabels.get(namespace) ?? {},
        ...(e.serviceAccount ? { serviceAccount: e.serviceAccount } : {}),
      }, {
        clusterName: this.clusterName,
        ...(opts.labelFilter ? { filter: opts.labelFilter } : {}),
      });
      const key = labels.join(",");
      let identity = byLabels.get(key);
      if (identity === undefined) {
        identity = 256 + byLabels.size;
        byLabels.set(key, identity);
        this.identities.push({ id: identity, labels });
      }
      const ips = [e.ip, e.ipv6].filter((x): x is string => x !== undefined);
      for (const ip of ips) {
        if (!parseAddress(ip)) throw new SyntaxError(`Invalid IP "${ip}" of endpoint "${e.name}"`);
      }
      const ep = {
        name: e.name,
        namespace,
        id: i + 1,
        identity,
        labels,
        ips,
        ports: (e.ports ?? []).map((p) => ({ ...p, name: p.name.toLowerCase() })),
      };
      if (this.#byName.has(`${namespace}/${e.name}`)) {
        throw new SyntaxError(`Duplicate endpoint "${namespace}/${e.name}"`);
      }
      this.endpoints.push(ep);
      this.#byName.set(`${namespace}/${e.name}`, ep);
      if (!this.#byName.has(e.name)) this.#byName.set(e.name, ep);
    });
  }

  /** By "name" (first with that name) or "namespace/name". */
  endpoint(ref: string): SimEndpoint | undefined {
    return this.#byName.get(ref);
  }

  /** Loads rules, identities (incl. CIDR identities of the spec), endpoints and IPs. */
  load(engine: PolicyEngine, spec: PolicySpec, options: EngineOptions): void {
    const cidrs: IdentitySpec[] = cidrPrefixesOf(spec).map((prefix, i) => ({
      id: LOCAL_IDENTITY_BASE + 1 + i,
      labels: cidrIdentityLabels(prefix),
      cidr: prefix,
    }));
    const stale = engine.identities.map((i) => i.id);
    engine.removeIdentities(stale);
    engine.upsertIdentities([...this.identities, ...cidrs]);
    engine.setPolicy(spec, options);
    engine.setEndpoints(
      this.endpoints.map((e) => ({ id: e.id, identity: e.identity, namedPorts: e.ports })),
    );
    engine.updateIpcache(
      this.endpoints.flatMap((e) => e.ips.map((ip) => ({ prefix: ip, identity: e.identity }))),
    );
  }
}
