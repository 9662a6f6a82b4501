/**
 * `/v1/bpf/…`: what the kernel holds, read from the pinned maps — an endpoint's policy entries
 * (with the rule each cookie names), conntrack, the ipcache, the node-IP SNAT map — and
 * `POST /v1/bpf/verify`, which judges one flow with the engine (as `policy trace` does) and
 * reads, for each local side, the map entry the packet would hit, saying whether kernel and
 * engine agree. Read-only.
 */

import type { Hono } from "hono";
import type { Agent } from "../agent.ts";
import { DIR_SERVICE, VERDICT_NAMES } from "../datapath/codecs.ts";
import { dumpConntrack } from "../datapath/conntrack_gc.ts";
import { dumpNat } from "../datapath/nat_map.ts";
import { formatIP } from "../datapath/_addr.ts";
import { type KernelLookup, kernelPolicyLookup } from "../datapath/kernel_lookup.ts";
import { EndpointNotFoundError } from "../endpoint/manager.ts";
import { traceFlow, TraceRequestSchema } from "../policy/trace.ts";
import { ApiError } from "./errors.ts";
import { jsonBody } from "./_params.ts";

function datapathOf(agent: Agent) {
  if (!agent.datapath) {
    throw new ApiError(503, "no_datapath", "The agent runs without the kernel datapath", {
      hint: "start it with --datapath kernel (the default) as root",
    });
  }
  return agent.datapath.datapath;
}

function endpointOf(agent: Agent, ref: string) {
  const ep = agent.endpoints.find(ref);
  if (!ep) throw new EndpointNotFoundError(`Endpoint "${ref}" does not exist on this node`);
  return ep;
}

export interface VerifySide {
  side: "egress" | "ingress";
  endpoint: string;
  engine: { verdict: string; decision: string; cookie: number };
  kernel: KernelLookup;
  agree: boolean;
}

export function registerBpfRoutes(app: Hono, agent: Agent): void {
  app.get("/v1/bpf/policy/:endpoint{.+}", async (c) => {
    const dp = datapathOf(agent);
    const ep = endpointOf(agent, c.req.param("endpoint"));
    const entries = (await dp.dumpPolicy(ep.id)).map((e) => {
      const rule = agent.monitor.attribution.byCookie(e.cookie);
      return {
        direction: e.egress ? "egress" : "ingress",
        identity: e.identity,
        proto: e.proto,
        portLo: e.portLo,
        portHi: e.portHi,
        verdict: VERDICT_NAMES[e.verdict] ?? String(e.verdict),
        cookie: e.cookie,
        ...(e.proxyPort ? { proxyPort: e.proxyPort } : {}),
        ...(rule ? { rule: rule.text.replace(/^\w+ by /, "") } : {}),
      };
    });
    return c.json({ endpoint: { id: ep.id, namespace: ep.namespace, name: ep.name }, entries });
  });

  app.get("/v1/bpf/nat", async (c) => {
    const dp = datapathOf(agent);
    return c.json(await dumpNat(`${dp.pins.root}/maps/cilia_snat`));
  });

  app.get("/v1/bpf/ct", (c) => {
    const dp = datapathOf(agent);
    const rows = dumpConntrack(dp.pins.maps.cilia_ct).map(({ key, value }) => {
      const family = Number(key["tuple.family"]);
      const addr = (k: string) => formatIP(family, key[k] as Uint8Array);
      return {
        endpoint: Number(key.ep_id),
        // DIR_SERVICE rows: a service connection's backend choice (peerIdentity = backend id).
        direction: Number(key.dir) === DIR_SERVICE
          ? "service"
          : Number(key.dir) === 2
          ? "egress"
          : "ingress",
        proto: Number(key["tuple.proto"]),
        source: addr("tuple.saddr"),
        sourcePort: Number(key["tuple.sport"]),
        destination: addr("tuple.daddr"),
        destinationPort: Number(key["tuple.dport"]),
        peerIdentity: Number(value.peer_identity),
        packets: Number(value.packets),
        bytes: Number(value.bytes),
        flags: Number(value.flags),
        ...(Number(value.rev_nat) ? { serviceId: Number(value.rev_nat) } : {}),
      };
    });
    return c.json(rows);
  });

  app.get("/v1/bpf/ipcache", async (c) => c.json(await datapathOf(agent).ipcacheEntries()));

  app.post("/v1/bpf/verify", async (c) => {
    const dp = datapathOf(agent);
    const req = await jsonBody(c, TraceRequestSchema, "trace request");
    const report = await agent.serial.run(() =>
      traceFlow(agent.engine, agent.endpoints.list(), req)
    );
    const sides: VerifySide[] = [];
    for (const side of ["egress", "ingress"] as const) {
      const s = report[side];
      if (!s || !agent.endpoints.find(String(s.endpointId))) continue;
      const peer = side === "egress" ? report.toIdentity : report.fromIdentity;
      const kernel = kernelPolicyLookup(dp.pins.maps, {
        epId: s.endpointId,
        egress: side === "egress",
        identity: peer,
        proto: report.proto,
        port: report.port,
      });
      sides.push({
        side,
        endpoint: s.endpoint,
        engine: { verdict: s.verdict, decision: s.decision, cookie: s.cookie },
        kernel,
        agree: kernel.verdict === s.verdict && (kernel.cookie === 0 || kernel.cookie === s.cookie),
      });
    }
    return c.json({ ...report, kernel: sides, agree: sides.every((s) => s.agree) });
  });
}
