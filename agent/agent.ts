/**
 * The Agent: the node daemon as one object. `Agent.start()` opens the kvstore, the policy engine
 * and every manager in dependency order (lease → identities → policies → IPAM → endpoints →
 * node record → collector → API), restoring state from the kvstore and the state dir; `close()`
 * stops them in reverse, leaving the lease to expire so that a restart takes over seamlessly.
 * State changes run one at a time (`serial`). No HTTP here: the API lives in `api/`.
 */

import { readDeleteQueue } from "./cni/delete_queue.ts";
import { CniDelRequestSchema } from "./cni/types.ts";
import {
  DEFAULT_OPTIONS,
  type IdentitySpec,
  PolicyEngine,
  RESERVED_IDENTITIES,
} from "@cilia/policy-wasm";
import type { AgentConfig } from "./config.ts";
import { Logger } from "./log.ts";
import {
  type AgentCounters,
  agentCounters,
  Metrics,
  type MetricsServer,
  serveMetrics,
} from "./metrics.ts";
import { type KvStore, openKvStore } from "./kvstore/kvstore.ts";
import type { DenoKvOptions } from "./kvstore/denokv.ts";
import { countedKvStore } from "./_kv_metrics.ts";
import { Serial } from "./_serial.ts";
import type { PrefixWatch } from "./_watch.ts";
import { NodeLease } from "./node/lease.ts";
import {
  hostAddresses,
  type NodeRecord,
  NodeRegistry,
  pickNodeIp,
  pickNodeIp6,
} from "./node/registry.ts";
import { NodeDiscovery } from "./node/discovery.ts";
import { NodeHealth } from "./node/health.ts";
import { NodeRoutes } from "./node/routes.ts";
import { checkTunnelProtocol, setupOverlay } from "./node/tunnel.ts";
import { setupNodeNat } from "./node/nat.ts";
import { IdentityCache } from "./identity/cache.ts";
import { IdentityAllocator } from "./identity/allocator.ts";
import { IdentityGc } from "./identity/gc.ts";
import { LocalCidrIdentities } from "./identity/local_cidr.ts";
import { Ipam } from "./ipam/ipam.ts";
import { type DatapathSink, NullSink } from "./endpoint/datapath_sink.ts";
import { Regenerator } from "./endpoint/regenerator.ts";
import { RetryLoop } from "./endpoint/retry_loop.ts";
import { EndpointManager, regenEndpoint } from "./endpoint/manager.ts";
import { CniAttachments } from "./endpoint/cni_attachments.ts";
import { CniAttachmentError } from "./endpoint/cni_error.ts";
import { restoreHostSides } from "./endpoint/_restore_host_sides.ts";
import { KernelSink, registerDatapathMetrics } from "./datapath/kernel_sink.ts";
import { setupSockLb } from "./datapath/sock_loader.ts";
import { type SockTermPins, terminateSockets, type TermResult } from "./datapath/sock_term.ts";
import { checkDatapath } from "./datapath/preflight.ts";
import { hostDevice, setupHostNetwork } from "./node/host_net.ts";
import { ProxyMaps } from "./datapath/proxy_maps.ts";
import { liveFlowPeers } from "./datapath/conntrack_gc.ts";
import { L7Proxy } from "./proxy/proxy.ts";
import { ProxySink } from "./proxy/sink.ts";
import { DnsProxy, engineJudge } from "./proxy/dns_proxy.ts";
import { RCODE } from "./proxy/dns_message.ts";
import { FqdnState } from "./identity/fqdn_state.ts";
import { PolicyRepository } from "./policy/repository.ts";
import {
  backendPairs,
  readServiceRecords,
  type RemovedBackend,
  ServiceManager,
} from "./service/manager.ts";
import { backendText, frontendText } from "./service/spec.ts";
import { policyServiceRefs } from "./service/policy_refs.ts";
import { type AgentStatus, agentStatus, probeKvstore } from "./status.ts";
import { Monitor } from "./monitor/monitor.ts";
import { registerMapOpMetrics } from "./monitor/metrics.ts";
import { MAP_OPS } from "./datapath/map_writer.ts";
import { timedSink } from "./_sink_metrics.ts";

export interface AgentOptions {
  config: AgentConfig;
  log?: Logger;
  /**
   * Where map-state diffs go. Default: the kernel datapath (`--datapath kernel`), or nothing
   * (`--datapath none`). A sink given here replaces both (tests).
   */
  sink?: DatapathSink;
  /** Deno KV timings (tests make them short). */
  denokv?: DenoKvOptions;
}

interface Closer {
  close(): Promise<void> | void;
}

export class Agent {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly metrics = new Metrics();
  readonly counters: AgentCounters;
  readonly serial = new Serial();
  readonly startedAt = new Date();
  store!: KvStore;
  engine!: PolicyEngine;
  regen!: Regenerator;
  /** Retries endpoint writes that failed, with backoff, until desired and realised agree. */
  retry!: RetryLoop;
  lease!: NodeLease;
  identities!: IdentityCache;
  allocator!: IdentityAllocator;
  gc!: IdentityGc;
  localIdentities!: LocalCidrIdentities;
  policies!: PolicyRepository;
  ipam!: Ipam;
  endpoints!: EndpointManager;
  cni!: CniAttachments;
  nodes!: NodeRegistry;
  /** Other nodes and their pods: ipcache entries, routes, tunnel endpoints. */
  discovery!: NodeDiscovery;
  /** Probes of the other nodes over the underlay (kernel datapath with a node IP). */
  nodeHealth: NodeHealth | undefined;
  /** The kernel datapath, when the agent runs it. */
  datapath: KernelSink | undefined;
  /** The node's L7 proxy (kernel datapath only) and its view of the kernel's proxy maps. */
  proxy: L7Proxy | undefined;
  proxyMaps: ProxyMaps | undefined;
  /** The node's DNS proxy (kernel datapath only) and what it learned for toFQDNs. */
  dnsProxy: DnsProxy | undefined;
  fqdn!: FqdnState;
  metricsServer: MetricsServer | undefined;
  /** ClusterIP services (flow 8): kvstore records → the datapath's service maps. */
  services: ServiceManager | undefined;
  /** Kernel events → flows: the one reader of the datapath's events. */
  monitor!: Monitor;
  #abort = new AbortController();
  #watches: PrefixWatch[] = [];
  #closers: Closer[] = [];
  /** Socket termination's pins, when the socket LB is on and the kernel has bpf_sock_destroy. */
  #sockTerm: SockTermPins | undefined;
  /**
   * Removed pairs named before the endpoints are restored (the first service write of a start,
   * compared with what the kernel held): ended once the pods' namespaces are known; undefined
   * after that.
   */
  #termPending: RemovedBackend[] | undefined = [];
  /** One termination run at a time (they share cilia_lb_sock_term). */
  #termChain: Promise<void> = Promise.resolve();
  #closed: Promise<void> | undefined;
  /** A new pod's veth MTU, known once `#followNodes` has the underlay (see `#podMtu`). */
  #podMtuKnown: { mtu: number | undefined } | undefined;

  private constructor(opts: AgentOptions) {
    this.config = opts.config;
    this.log = opts.log ?? new Logger({ level: opts.config.logLevel });
    this.counters = agentCounters(this.metrics);
  }

  static async start(opts: AgentOptions): Promise<Agent> {
    const agent = new Agent(opts);
    try {
      await agent.#start(opts);
    } catch (err) {
      await agent.close().catch(() => {});
      throw err;
    }
    return agent;
  }

  async #start(opts: AgentOptions): Promise<void> {
    const c = this.config;
    const log = this.log;
    const signal = this.#abort.signal;
    // Where a start's time goes, logged with "agent started" (ms since the process started first).
    const ms: Record<string, number> = { process: Math.round(performance.now()) };
    let last = performance.now();
    const phase = (name: string) => {
      ms[name] = Math.round(performance.now() - last);
      last = performance.now();
    };
    // The datapath (preflight, object cache key, pins, the kernel's maps read back) opens while
    // the kvstore and the engine do: none needs another.
    const opening = opts.sink === undefined && c.datapath === "kernel"
      ? checkDatapath(c.bpffsRoot).then(() =>
        KernelSink.open({
          bpffsRoot: c.bpffsRoot,
          buildDir: c.bpfBuildDir,
          log: log.child({ subsys: "datapath" }),
          mapSizes: {
            ctMax: c.bpfCtMax,
            policyMax: c.bpfPolicyMapMax,
            ipcacheMax: c.bpfIpcacheMax,
          },
        })
      )
      : undefined;
    opening?.catch(() => {}); // awaited below: a failure meanwhile is not "unhandled"
    try {
      await Deno.mkdir(c.stateDir, { recursive: true, mode: 0o700 });
      const raw = await openKvStore(c.kvstore, opts.denokv ? { denokv: opts.denokv } : {});
      this.store = countedKvStore(raw, this.counters.kvstoreOps);
      this.#closers.push(this.store);
      phase("kvstore");
      this.engine = await PolicyEngine.create();
      this.#closers.push(this.engine);
      phase("engine");
    } catch (err) {
      await opening?.then((dp) => dp.close(), () => {});
      throw err;
    }
    if (opening) {
      this.datapath = await opening;
      this.#closers.push(this.datapath);
      // Socket LB (bpf/sock.c): reads the service maps just pinned, which keep their entries
      // across a restart, so the new programs replace the old ones with nothing to wait for.
      this.#sockTerm = (await setupSockLb({
        enabled: c.bpfLbSock,
        ...(c.cgroupRoot !== undefined ? { cgroupRoot: c.cgroupRoot } : {}),
        bpffsRoot: c.bpffsRoot,
        buildDir: c.bpfBuildDir,
        stateDir: c.stateDir,
        log: log.child({ subsys: "sock-lb" }),
      }))?.term;
      // The L7 proxy lives in the agent (docs/architecture.md, "L7"): it judges with this engine.
      const m = this.datapath.datapath.pins.maps;
      this.proxyMaps = new ProxyMaps({
        cfg: m.cilia_proxy_cfg,
        orig: m.cilia_proxy_orig,
        nat: m.cilia_proxy_nat,
      });
      this.#closers.push(this.proxyMaps);
      this.proxy = new L7Proxy({
        engine: this.engine,
        maps: this.proxyMaps,
        log: log.child({ subsys: "proxy" }),
        metrics: this.metrics,
        portsFile: `${c.stateDir}/proxy-ports.json`,
        httpIo: c.l7HttpIo,
      });
      this.#closers.push(this.proxy);
      this.dnsProxy = new DnsProxy({
        judge: engineJudge(this.engine),
        maps: this.proxyMaps,
        learn: (ep, names, ips) => this.fqdn.learn(ep, names, ips),
        knownUntil: (ep, names, ips) => this.fqdn.knownUntil(ep, names, ips),
        log: log.child({ subsys: "dns-proxy" }),
        metrics: this.metrics,
        rejectRcode: c.tofqdnsDnsRejectResponseCode === "nameError"
          ? RCODE.NXDOMAIN
          : RCODE.REFUSED,
        upstreamTimeoutMs: c.tofqdnsProxyResponseTimeout * 1000,
        connectTcp: (o, clientIp) => this.proxy!.connectUpstream(o, clientIp),
      });
      this.#closers.push(this.dnsProxy);
      // The DNS proxy's Worker caches verdicts: any change of the engine makes them stale.
      this.engine.onChange(() => this.dnsProxy?.invalidate());
      phase("datapath");
    }
    const options = { ...DEFAULT_OPTIONS, clusterName: c.clusterName };
    const regenLog = log.child({ subsys: "regeneration" });
    this.retry = new RetryLoop({
      run: () => this.serial.run(() => this.regen.retryDirty()),
      onError: (err) => regenLog.error("retry failed", { error: err }),
    });
    this.#closers.push(this.retry);
    this.regen = new Regenerator({
      engine: this.engine,
      sink: timedSink(
        opts.sink ??
          (this.datapath && this.proxy
            ? new ProxySink(this.datapath, this.proxy, this.dnsProxy)
            : undefined) ??
          new NullSink(),
        this.metrics.histogram(
          "cilia_endpoint_regeneration_seconds",
          "time to write one endpoint's policy (a whole policy or a diff) to the datapath",
          [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        ),
      ),
      log: regenLog,
      options,
      counter: this.counters.regenerations,
      onDirty: () => this.retry.kick(),
    });
    await this.regen.addIdentities(RESERVED_IDENTITIES);
    this.lease = await NodeLease.grant(this.store, c.leaseTtl, log.child({ subsys: "lease" }));
    this.#closers.push(this.lease);
    phase("lease");

    this.identities = new IdentityCache();
    const idLog = log.child({ subsys: "identity" });
    this.allocator = new IdentityAllocator({
      store: this.store,
      cache: this.identities,
      lease: this.lease,
      node: c.nodeName,
      range: c.identityRange,
      log: idLog,
    });
    this.#closers.push({ close: () => this.allocator.settle() });
    this.identities.onChange((change) =>
      this.serial.run(async () => {
        await this.regen.removeIdentities(change.removed);
        await this.regen.addIdentities(change.added);
      })
    );
    await this.#follow(this.identities.follow(this.store, { signal, log: idLog }));
    phase("identities");

    this.localIdentities = new LocalCidrIdentities(`${c.stateDir}/local-identities.json`);
    await this.localIdentities.load();
    // Restored before the first policy load, which gives the learned addresses their identities.
    this.fqdn = new FqdnState({
      regen: this.regen,
      serial: this.serial,
      log: log.child({ subsys: "fqdn" }),
      minTtl: c.tofqdnsMinTtl,
      maxIpsPerName: c.tofqdnsEndpointMaxIpPerHostname,
      path: `${c.stateDir}/fqdn-cache.json`,
      onChange: () => this.dnsProxy?.invalidate(),
      ...(this.datapath
        ? {
          liveFlows: ((ct: string) => () => liveFlowPeers(ct))(
            this.datapath.datapath.pins.maps.cilia_ct,
          ),
        }
        : {}),
    });
    await this.fqdn.start();
    this.#closers.push(this.fqdn);
    // toServices resolve against the stored services from the first policy load on.
    const storedServices = await readServiceRecords(this.store);
    this.policies = new PolicyRepository({
      store: this.store,
      regen: this.regen,
      local: this.localIdentities,
      fqdn: this.fqdn,
      serial: this.serial,
      clusterName: c.clusterName,
      log: log.child({ subsys: "policy" }),
      importErrors: this.counters.policyImportErrors,
      revisionFile: `${c.stateDir}/policy-revision.json`,
      services: () => policyServiceRefs(this.services?.list() ?? storedServices),
      ...(this.store.maxValueBytes !== undefined
        ? { maxValueBytes: this.store.maxValueBytes }
        : {}),
    });
    this.#closers.push(this.policies);
    await this.policies.restoreRevision();
    await this.#follow(this.policies.follow({ signal }));
    phase("policies");

    this.ipam = new Ipam({
      store: this.store,
      node: c.nodeName,
      ...(c.podCidr ? { podCidr: c.podCidr } : {}),
      ...(c.podCidrV6 ? { podCidrV6: c.podCidrV6 } : {}),
      log: log.child({ subsys: "ipam" }),
    });
    const addresses = await this.ipam.restore();
    if (this.datapath) {
      // The node's own addresses, the pod gateways among them, are reserved:host.
      const gateways = await setupHostNetwork(this.ipam.pools());
      const gw4 = this.ipam.pools().find((p) => p.family === 4)?.gateway ?? "";
      const gw6 = this.ipam.pools().find((p) => p.family === 6)?.gateway ?? "";
      if (this.proxy && this.proxyMaps && gw4) {
        const dev = await hostDevice();
        this.proxy.gateway = gw4;
        this.proxy.gateway6 = gw6;
        this.proxyMaps.configure({
          gateway: gw4,
          gateway6: gw6,
          hostIfindex: dev.ifindex,
          hostMac: dev.mac,
        });
        // Before endpoints are restored: their DNS redirects need the proxy's port.
        await this.dnsProxy?.start(gw4, c.tofqdnsProxyPort, gw6);
      }
      const own = [...new Set([...gateways, ...hostAddresses()])];
      await this.regen.updateIpcache(own.map((prefix) => ({ prefix, identity: 1 })));
    }
    // Services before endpoints: a restored pod's connections to a VIP keep their backend.
    // NodePorts listen on these (bpf/lib/nodeport6.h for IPv6); flows name them (the monitor).
    const nodePortAddresses = [
      pickNodeIp(c.nodeIp, this.ipam.pools().map((p) => p.gateway), { device: c.devices }),
    ]
      .flatMap((ip) => [ip, pickNodeIp6(ip, { device: c.devices })])
      .filter((x): x is string => x !== undefined);
    this.services = new ServiceManager({
      store: this.store,
      ...(this.datapath ? { sink: this.datapath } : {}),
      log: log.child({ subsys: "service" }),
      podCidrs: [c.podCidr, c.podCidrV6].filter((x): x is string => typeof x === "string"),
      nodePortRange: c.nodePortRange,
      nodePortAddresses,
      // toServices in policies resolves against these records (repository.servicesChanged);
      // flows name the services of events by them (the monitor, once it exists: it starts with
      // the list below).
      onChange: (s) => {
        this.monitor?.servicesChanged(s);
        return this.policies.servicesChanged();
      },
      // Socket LB: a removed backend's translated connections end (bpf/sock_term.c).
      ...(this.#sockTerm ? { onBackendsRemoved: (r) => this.#backendsRemoved(r) } : {}),
    });
    await this.#follow(this.services.follow({ signal }));
    phase("hostAndServices");
    this.endpoints = new EndpointManager({
      store: this.store,
      node: c.nodeName,
      allocator: this.allocator,
      regen: this.regen,
      ipam: this.ipam,
      serial: this.serial,
      clusterName: c.clusterName,
      identityLabels: c.identityLabels,
      log: log.child({ subsys: "endpoint" }),
    });
    const restored = await this.endpoints.restore(
      this.datapath
        ? { prepare: (eps) => restoreHostSides(eps, log.child({ subsys: "cni" })) }
        : {},
    );
    phase("endpoints");
    this.#endPendingSockets();
    this.monitor = new Monitor({
      engine: this.engine,
      endpoints: () => this.endpoints.list(),
      endpoint: (id) => this.endpoints.has(id) ? this.endpoints.get(id) : undefined,
      services: this.services.list(),
      nodeAddresses: nodePortAddresses,
      nodeName: c.nodeName,
      bufferSize: c.flowBufferSize,
      log: log.child({ subsys: "monitor" }),
      metrics: this.metrics,
    });
    this.#closers.push(this.monitor);
    if (this.datapath) this.monitor.start(this.datapath.datapath.pins.maps.cilia_events);
    if (this.proxy) this.proxy.onRecord = (r) => this.monitor.ingestL7(r);
    if (this.proxy) this.proxy.onBatch = (b) => this.monitor.ingestL7Batch(b);
    if (this.proxy) {
      // The second L7 hop: a redirected connection's server may be a pod on this node.
      this.proxy.localEndpoint = (ip) =>
        this.endpoints.list().find((e) => e.ipv4 === ip || e.ipv6 === ip)?.id;
      this.proxy.retainEndpoints(new Set(this.endpoints.list().map((e) => e.id)));
    }
    if (this.dnsProxy) this.dnsProxy.onRecord = (r) => this.monitor.ingestDns(r);
    if (this.dnsProxy) this.dnsProxy.onBatch = (rs) => this.monitor.ingestDnsBatch(rs);
    this.cni = new CniAttachments({
      endpoints: this.endpoints,
      ipam: this.ipam,
      log: log.child({ subsys: "cni" }),
      kernel: this.datapath !== undefined,
      ...(this.datapath ? { checkDatapath: (ep) => this.datapath!.check(regenEndpoint(ep)) } : {}),
      podMtu: () => this.#podMtu(),
    });
    await this.#replayDeleteQueue();
    // Other nodes' entries are back before reconcile, which deletes what nobody re-applied.
    const self = await this.#followNodes(signal);
    phase("nodes");
    if (this.datapath) {
      await this.cni.sweep();
      phase("sweep");
      await this.datapath.reconcile();
      phase("reconcile");
    }

    this.nodes = new NodeRegistry(this.store, this.lease, self);
    await this.nodes.register();
    phase("register");
    this.gc = new IdentityGc({
      store: this.store,
      allocator: this.allocator,
      graceMs: c.identityGcGrace * 1000,
      intervalMs: c.identityGcInterval * 1000,
      log: idLog,
    });
    this.#closers.push(this.gc);
    this.gc.start();
    this.#gauges();
    if (c.metricsAddr !== undefined) {
      this.metricsServer = serveMetrics(this.metrics, c.metricsAddr, log);
      this.#closers.push(this.metricsServer);
    }
    log.info("agent started", {
      node: c.nodeName,
      kvstore: this.store.name,
      identities: this.identities.size,
      policies: this.policies.size,
      endpoints: restored,
      addresses,
      ms,
    });
  }

  /**
   * This node's record, the tunnel device and its programs (tunnel mode, kernel datapath), and
   * the watch on the other nodes and their endpoints (node/discovery.ts).
   */
  async #followNodes(signal: AbortSignal): Promise<NodeRecord> {
    const c = this.config;
    const log = this.log.child({ subsys: "nodes" });
    const gw = (f: 4 | 6) => this.ipam.pools().find((p) => p.family === f)?.gateway;
    const ip = pickNodeIp(c.nodeIp, this.ipam.pools().map((p) => p.gateway), {
      device: c.devices,
    });
    let tunnel: { ifname: string; mtu: number } | undefined;
    let underlayMtu = c.mtu || undefined;
    if (this.datapath && c.routingMode === "tunnel") await checkTunnelProtocol(c.tunnelProtocol);
    // Before the overlay: its programs share the NAT maps host.o pins.
    if (this.datapath && ip !== undefined) {
      const podCidr = this.ipam.pools().find((p) => p.family === 4)?.cidr;
      const podCidrV6 = this.ipam.pools().find((p) => p.family === 6)?.cidr;
      const nodeIp6 = pickNodeIp6(ip, { device: c.devices });
      const nat = await setupNodeNat({
        nodeIp: ip,
        device: c.devices,
        ...(podCidr ? { podCidr } : {}),
        ...(nodeIp6 ? { nodeIp6, ...(podCidrV6 ? { podCidrV6 } : {}) } : {}),
        ...(c.ipv4NativeRoutingCidr ? { nativeRoutingCidr: c.ipv4NativeRoutingCidr } : {}),
        masquerade: c.enableIpv4Masquerade,
        nodePort: true,
        dsr: c.nodePortMode === "dsr",
        // VXLAN passes the underlay hooks untouched (no NodePort can take that port: config.ts
        // refuses a tunnel port inside --node-port-range).
        ...(c.routingMode === "tunnel" ? { tunnelPort: c.tunnelPort } : {}),
        bpffsRoot: c.bpffsRoot,
        buildDir: c.bpfBuildDir,
      });
      underlayMtu ??= nat.mtu;
      log.info("underlay programs attached", {
        device: nat.ifname,
        mtu: underlayMtu,
        masquerade: c.enableIpv4Masquerade,
      });
    }
    if (this.datapath && c.routingMode === "tunnel" && ip !== undefined) {
      tunnel = await setupOverlay({
        protocol: c.tunnelProtocol,
        port: c.tunnelPort,
        nodeIp: ip,
        underlayMtu,
        device: c.devices,
        bpffsRoot: c.bpffsRoot,
        buildDir: c.bpfBuildDir,
      });
    } else if (ip === undefined) {
      log.info("no node IP: other nodes cannot reach this node's pods (set --node-ip)");
    }
    // Pods get the tunnel's MTU (Cilium's): BPF takes their packets past the tunnel route, whose
    // MTU would tell them nothing, so a full-size non-GSO packet would be lost without a word;
    // with it TCP's MSS and the pod's own path MTU leave room for the 50 bytes of VXLAN.
    this.#podMtuKnown = { mtu: tunnel?.mtu ?? underlayMtu };
    const self: NodeRecord = {
      name: c.nodeName,
      addresses: hostAddresses(),
      ...(ip !== undefined ? { ip } : {}),
      routingMode: c.routingMode,
      ...(c.podCidr ? { podCidr: c.podCidr } : {}),
      ...(c.podCidrV6 ? { podCidrV6: c.podCidrV6 } : {}),
      startedAt: this.startedAt.toISOString(),
    };
    const v4 = gw(4), v6 = gw(6);
    this.discovery = new NodeDiscovery({
      store: this.store,
      self,
      mode: c.routingMode,
      ipcache: (up, del) => this.regen.updateIpcache(up, del),
      ...(this.datapath ? { routes: new NodeRoutes() } : {}),
      ...(tunnel ? { tunnel } : {}),
      gateways: { ...(v4 ? { v4 } : {}), ...(v6 ? { v6 } : {}) },
      serial: this.serial,
      log,
      gracePeriodMs: Math.min(c.nodeGracePeriod, c.identityGcGrace) * 1000,
    });
    if (c.nodeGracePeriod > c.identityGcGrace) {
      log.warn("--node-grace-period is capped at --identity-gc-grace", {
        nodeGracePeriod: c.nodeGracePeriod,
        identityGcGrace: c.identityGcGrace,
      });
    }
    await this.#follow(this.discovery.follow({ signal }));
    if (this.datapath && ip !== undefined) {
      try {
        this.nodeHealth = new NodeHealth({
          ip,
          port: c.clusterHealthPort,
          peers: () => this.discovery.list(),
          log,
        });
        this.#closers.push(this.nodeHealth);
      } catch (err) {
        // Reachability is reported, never enforced: the node works on without it.
        log.warn("cannot answer node health probes", {
          port: c.clusterHealthPort,
          error: String(err),
        });
      }
    }
    return self;
  }

  /**
   * A new pod's veth MTU: the tunnel device's (underlay − 50) in tunnel mode, the underlay's
   * natively, the kernel's default without a node IP. Refused (503) before `#followNodes` knows
   * it: the API serves ADDs only once `start()` is done, but a pod must never get a wrong MTU.
   */
  #podMtu(): number | undefined {
    if (this.#podMtuKnown === undefined) {
      throw new CniAttachmentError(
        "cni_unavailable",
        "Cannot add a pod yet: the agent is starting (the pods' MTU is known once the tunnel " +
          "device is up)",
        503,
      );
    }
    return this.#podMtuKnown.mtu;
  }

  /** CNI DELs that arrived while the agent was down (see agent/cni/delete_queue.ts). */
  async #replayDeleteQueue(): Promise<void> {
    const log = this.log.child({ subsys: "cni" });
    for (const q of await readDeleteQueue(this.config.socket)) {
      const req = CniDelRequestSchema.safeParse(q.request);
      if (!req.success) {
        log.warn("ignoring a malformed queued CNI DEL", { file: q.path });
      } else {
        try {
          const r = await this.cni.del(req.data);
          log.info("replayed a queued CNI DEL", { ...req.data, deleted: r.deleted });
        } catch (err) {
          log.error("cannot replay a queued CNI DEL; keeping it", {
            file: q.path,
            error: (err as Error).message,
          });
          continue;
        }
      }
      await Deno.remove(q.path).catch(() => {});
    }
  }

  /** A service write removed pairs: end their sockets now, or once the endpoints are restored. */
  #backendsRemoved(removed: RemovedBackend[]): Promise<void> {
    if (this.#termPending === undefined) return this.#endSockets(removed);
    this.#termPending.push(...removed);
    return Promise.resolve();
  }

  /**
   * After the endpoints are restored: pairs removed while the agent was down end in the
   * background (the start does not wait for the walk; close() does).
   */
  #endPendingSockets(): void {
    // A pair a later write gave back meanwhile is not ended.
    const now = backendPairs(this.services?.list() ?? []);
    const pending = (this.#termPending ?? []).filter((x) =>
      !now.has(`${frontendText(x)} ${backendText(x.backend)}`)
    );
    this.#termPending = undefined;
    if (pending.length === 0) return;
    this.log.info("socket LB: backends were removed while the agent was down", {
      backends: pending.map((x) => `${frontendText(x)} → ${backendText(x.backend)}`),
    });
    const run = this.#endSockets(pending);
    this.#closers.push({ close: () => run });
  }

  /** One run after the other (see #endSocketsNow). */
  #endSockets(removed: RemovedBackend[]): Promise<void> {
    const run = this.#termChain.then(() => this.#endSocketsNow(removed));
    this.#termChain = run.catch(() => {});
    return run;
  }

  /**
   * Ends the socket LB's connections to removed backends in this node's netns and its pods'. The
   * walk runs in a Worker (datapath/sock_term.ts); a run that fails, stalls past 30 s or whose
   * Worker cannot return to its netns is logged here and never fails the service update.
   */
  async #endSocketsNow(removed: RemovedBackend[]): Promise<void> {
    const eps = (this.endpoints as EndpointManager | undefined)?.list() ?? [];
    const netns = [...new Set(eps.flatMap((e) => e.netns !== undefined ? [e.netns] : []))];
    const backends = removed.map((x) => `${frontendText(x)} → ${backendText(x.backend)}`);
    const started = performance.now();
    const elapsed = () => Math.round(performance.now() - started);
    let r: TermResult;
    try {
      r = await terminateSockets(this.#sockTerm!, removed, netns, { signal: this.#abort.signal });
    } catch (err) {
      this.log.warn("socket LB: cannot end the connections of removed backends", {
        error: err,
        backends,
        netns: netns.length + 1,
        ms: elapsed(),
      });
      return;
    }
    this.log.info("socket LB: ended the connections of removed backends (walk in a worker)", {
      backends,
      netns: r.walked,
      ms: elapsed(),
    });
    for (const f of r.failed) {
      this.log.warn("socket LB: cannot end connections in a netns", { ...f, backends });
    }
  }

  async #follow(w: PrefixWatch): Promise<void> {
    this.#watches.push(w);
    await w.ready;
  }

  /** Registers something to close (before everything opened by `start`), e.g. the API server. */
  onClose(c: Closer): void {
    this.#closers.push(c);
  }

  #gauges(): void {
    const m = this.metrics;
    m.gauge(
      "cilia_identity_count",
      "global identities known to this agent",
      () => this.identities.size,
    );
    m.gauge(
      "cilia_local_identity_count",
      "node-local CIDR identities",
      () => this.localIdentities.size,
    );
    m.gauge("cilia_endpoint_count", "endpoints on this node", () => this.endpoints.size);
    m.gauge(
      "cilia_policy_revision",
      "revision of the policy in force",
      () => this.policies.revision,
    );
    m.gauge("cilia_policy_count", "policy documents in force", () => this.policies.size);
    const states = m.labeledGauge(
      "cilia_endpoint_state",
      "endpoints on this node by state (not-ready: the policy in force is not written; the kernel drops their traffic)",
    );
    const lag = m.labeledGauge(
      "cilia_policy_unrealised_endpoints",
      "endpoints whose policy revision is behind the one the agent wants in force",
    );
    m.onScrape(() => {
      const notReady = this.regen.unrealised().length;
      states.set({ state: "ready" }, this.endpoints.size - notReady);
      states.set({ state: "not-ready" }, notReady);
      lag.set(
        {},
        this.endpoints.list().filter((e) => {
          const r = this.regen.resolved(e.id);
          return r !== undefined && (r.revision < r.desiredRevision || r.error !== undefined);
        }).length,
      );
    });
    if (this.datapath) registerDatapathMetrics(m, this.datapath);
    registerMapOpMetrics(m, MAP_OPS);
  }

  /** Every identity this agent knows: reserved, global (with this node's references), local. */
  identityList(): (IdentitySpec & { scope: string; refs?: number })[] {
    return [
      ...RESERVED_IDENTITIES.map((i) => ({ ...i, scope: "reserved" })),
      ...this.identities.all().map((i) => ({
        ...i,
        scope: "global",
        refs: this.allocator.refCount(i.id),
      })),
      ...this.localIdentities.all().map((i) => ({ ...i, scope: "local" })),
    ];
  }

  async status(): Promise<AgentStatus> {
    return agentStatus(this, await probeKvstore(this.store));
  }

  /** Stops everything; safe to call twice and after a failed start. */
  close(): Promise<void> {
    return this.#closed ??= this.#close();
  }

  async #close(): Promise<void> {
    this.#abort.abort();
    const closers = [...this.#closers].reverse();
    const storeAndEngine = closers.filter((c) => c === this.store || c === this.engine);
    for (const c of closers.filter((c) => !storeAndEngine.includes(c))) {
      await Promise.resolve(c.close()).catch((err) =>
        this.log.warn("error while closing", { error: err })
      );
    }
    await Promise.allSettled(this.#watches.map((w) => w.done));
    await this.serial.idle();
    for (const c of storeAndEngine) await Promise.resolve(c.close()).catch(() => {});
    this.log.info("agent stopped", { node: this.config.nodeName });
  }
}
