// Puts proxy ports on redirect entries on their way into the datapath: a DatapathSink in front
// of the kernel sink that, for every HTTP or Kafka redirect entry an endpoint's policy adds, makes
// the L7 proxy listen for (endpoint, direction, port) first and only then passes the entry on
// with that port, so the kernel never redirects to a proxy that is not there and allowed requests
// see no window of drops. A port range (adjacent L7 ports merge into one entry) gets one listener
// that judges each connection on the port it was made to. DNS redirects get the DNS proxy's port
// once it is bound (it listens on UDP and TCP there). Redirects no proxy serves (DNS on a range,
// L7 on UDP other than DNS) keep no port: the kernel drops them (reason 178, fail closed). It
// changes nothing else.

import type {
  DatapathEndpoint,
  DatapathSink,
  EndpointFlags,
  PolicyChange,
  SinkEntry,
} from "../endpoint/datapath_sink.ts";
import type { IpcacheEntry } from "@cilia/policy-wasm";
import type { L7Proxy } from "./proxy.ts";

/** The DNS proxy as the sink sees it: its port, 0 while it is not bound. */
export interface DnsPort {
  readonly port: number;
}

export class ProxySink implements DatapathSink {
  readonly #inner: DatapathSink;
  readonly #proxy: L7Proxy;
  readonly #dns: DnsPort | undefined;
  readonly check?: (ep: DatapathEndpoint) => Promise<string | undefined>;

  constructor(inner: DatapathSink, proxy: L7Proxy, dns?: DnsPort) {
    this.#inner = inner;
    this.#proxy = proxy;
    this.#dns = dns;
    if (inner.check) this.check = (ep) => inner.check!(ep);
  }

  async #withPorts(epId: number, change: PolicyChange): Promise<PolicyChange> {
    if (!change.adds.some((e) => e.verdict === "redirect")) return change;
    const adds: SinkEntry[] = [];
    for (const e of change.adds) {
      const dnsPort = this.#dns?.port ?? 0;
      if (e.verdict === "redirect" && e.l7 === "dns" && e.portLo === e.portHi && dnsPort > 0) {
        adds.push({ ...e, proxyPort: dnsPort });
        continue;
      }
      const l7 = e.l7 === "http" || e.l7 === "kafka" ? e.l7 : undefined;
      if (e.verdict !== "redirect" || !l7 || e.proto !== 6) {
        adds.push(e);
        continue;
      }
      const ports = [e.portLo, e.portHi] as const;
      adds.push({ ...e, proxyPort: await this.#proxy.listen(epId, e.direction, ports, l7) });
    }
    return { ...change, adds };
  }

  async attach(ep: DatapathEndpoint, flags: EndpointFlags, change: PolicyChange): Promise<void> {
    await this.#inner.attach(ep, flags, await this.#withPorts(ep.id, change));
  }

  updateEndpoint(ep: DatapathEndpoint, flags: EndpointFlags): void | Promise<void> {
    return this.#inner.updateEndpoint(ep, flags);
  }

  async removeEndpoint(ep: DatapathEndpoint): Promise<void> {
    await this.#inner.removeEndpoint(ep);
    this.#proxy.closeEndpoint(ep.id);
  }

  async applyPolicy(endpointId: number, change: PolicyChange): Promise<void> {
    await this.#inner.applyPolicy(endpointId, await this.#withPorts(endpointId, change));
  }

  updateIpcache(upserts: IpcacheEntry[], deletes: IpcacheEntry[]): void | Promise<void> {
    return this.#inner.updateIpcache(upserts, deletes);
  }
}
