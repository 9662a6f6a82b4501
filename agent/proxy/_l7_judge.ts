// The verdicts of the L7 proxy: one HTTP request or Kafka request of a redirected connection asked
// of the agent's policy engine (the one evaluator), by the redirecting endpoint's policy and, for
// two L7 hops on this node, by the server endpoint's ingress policy with the client's identity.
// It only asks: timing, records and connections are the caller's.

import type { PolicyEngine } from "@cilia/policy-wasm";
import type { OrigDestination } from "../datapath/proxy_maps.ts";
import { DIR_EGRESS } from "../datapath/codecs.ts";
import type { HttpRequestInfo } from "./http_records.ts";
import type { HttpVerdict } from "./http_worker_path.ts";
import type { KafkaRequestInfo } from "./kafka_request.ts";
import type { Direction } from "./proxy.ts";

/** The direction the kernel redirected `o` in. */
export function directionOf(o: OrigDestination): Direction {
  return o.dir === DIR_EGRESS ? "egress" : "ingress";
}

/** Asks the agent's engine about the L7 requests of redirected connections. */
export class L7Judge {
  readonly #engine: PolicyEngine;

  constructor(engine: PolicyEngine) {
    this.#engine = engine;
  }

  /**
   * The verdict on one HTTP request (`hop2`: the server endpoint on this node whose ingress
   * policy judges it as well), with the deciding entry's cookie and rule.
   */
  http(o: OrigDestination, req: HttpRequestInfo, hop2: number | undefined): HttpVerdict {
    const engine = this.#engine;
    const direction = directionOf(o);
    const http = { method: req.method, path: req.path, host: req.host, headers: req.headers };
    // judgeHttp(): query()'s verdict without the explanation, written and read in place.
    const r = engine.judgeHttp({
      endpoint: o.epId,
      direction,
      peer: direction === "ingress" ? o.srcIdentity : o.dstIdentity,
      proto: 6,
      port: o.port,
      http,
    });
    let v: HttpVerdict = {
      allowed: passes(r),
      cookie: r.cookie || o.cookie,
      rule: r.l7.rule,
      hop2,
    };
    if (v.allowed && hop2 !== undefined) {
      const r2 = engine.judgeHttp({
        endpoint: hop2,
        direction: "ingress",
        peer: o.srcIdentity,
        proto: 6,
        port: o.port,
        http,
      });
      if (!passes(r2)) {
        v = { allowed: false, cookie: r2.cookie || o.cookie, rule: r2.l7.rule, hop2 };
      }
    }
    return v;
  }

  /** The verdict on one Kafka request, as http()'s for HTTP (no hop2 in the result). */
  kafka(
    o: OrigDestination,
    req: KafkaRequestInfo,
    hop2: number | undefined,
  ): { allowed: boolean; cookie: number; rule: number } {
    const engine = this.#engine;
    const direction = directionOf(o);
    const kafka = {
      apiKey: req.apiKey,
      apiVersion: req.apiVersion,
      clientID: req.clientId,
      topics: [...new Set(req.topics.map((t) => t.name))],
    };
    let r = engine.query({
      endpoint: o.epId,
      direction,
      peer: direction === "ingress" ? o.srcIdentity : o.dstIdentity,
      proto: 6,
      port: o.port,
      kafka,
    });
    if (passes(r) && hop2 !== undefined) {
      r = engine.query({
        endpoint: hop2,
        direction: "ingress",
        peer: o.srcIdentity,
        proto: 6,
        port: o.port,
        kafka,
      });
    }
    return { allowed: passes(r), cookie: r.cookie || o.cookie, rule: r.l7.rule };
  }
}

/** Whether a verdict lets a request through (an L7 redirect: only when its rules allow it). */
function passes(r: { verdict: string; l7: { status: string } }): boolean {
  return r.verdict === "allow" || r.verdict === "audit" ||
    (r.verdict === "redirect" && r.l7.status === "allowed");
}
