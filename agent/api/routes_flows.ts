/**
 * `/v1/flows` and `/v1/events`: the monitor's flows (filters in Hubble's vocabulary as query
 * parameters, `last`, `since`, `follow`) and raw datapath events (`type`), as NDJSON. A query
 * ends with a `{"stats"}` line (buffer fill, lost events); a follow streams until the client goes
 * away, with `{"lost_events"}` lines whenever it lost something. A follower's pace never holds the
 * monitor back: it has a bounded queue and loses what does not fit. Flows reach a follower as
 * lines the monitor serialised once, and leave in chunks of many lines.
 */

import type { Hono } from "hono";
import type { Agent } from "../agent.ts";
import { FilterError, filterFromParams, type FlowFilter } from "../monitor/filter.ts";
import type { Follower } from "../monitor/ring.ts";
import { eventToJson, flowNdjson, type MonitorLine } from "../monitor/wire.ts";
import { FLOW_TYPES } from "../monitor/flow.ts";
import { ApiError } from "./errors.ts";

const NDJSON = { "content-type": "application/x-ndjson" };
const enc = new TextEncoder();
const line = (l: MonitorLine) => JSON.stringify(l) + "\n";
/** Flows per read of a follower (chunks of lines from the monitor count as their lines). */
const CHUNK_ITEMS = 8192;

function filterOf(params: URLSearchParams): FlowFilter {
  try {
    return filterFromParams(params);
  } catch (err) {
    if (err instanceof FilterError) throw new ApiError(400, "invalid_filter", err.message);
    throw err;
  }
}

function intParam(params: URLSearchParams, name: string): number | undefined {
  const v = params.get(name);
  if (v === null) return undefined;
  if (!/^\d{1,9}$/.test(v)) {
    throw new ApiError(400, "invalid_request", `Invalid ${name} "${v}": expected a count`);
  }
  return Number(v);
}

function sinceParam(params: URLSearchParams): Date | undefined {
  const v = params.get("since");
  if (v === null) return undefined;
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) {
    throw new ApiError(400, "invalid_request", `Invalid since "${v}": expected an ISO 8601 time`);
  }
  return d;
}

/** A stream that drains a follower; cancelling it (the client left) unfollows. */
function followStream<T>(
  agent: Agent,
  follower: Follower<T>,
  head: string,
  render: (item: T) => string | Uint8Array,
): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(ctl) {
      if (head) ctl.enqueue(enc.encode(head));
    },
    async pull(ctl) {
      const { items, lost, done } = await follower.take(CHUNK_ITEMS);
      if (done) return ctl.close();
      let text = "";
      for (const l of lost) {
        text += line({ lost_events: { source: l.source, num_events_lost: l.count } });
      }
      for (const i of items) {
        const r = render(i);
        if (typeof r === "string") text += r;
        else {
          // a chunk of lines the monitor wrote as bytes: it goes out as it is
          if (text) ctl.enqueue(enc.encode(text));
          text = "";
          ctl.enqueue(r);
        }
      }
      if (text) ctl.enqueue(enc.encode(text));
    },
    cancel() {
      agent.monitor.unfollow(follower as never);
    },
  }, { highWaterMark: 1 });
}

const monitorOf = (agent: Agent) => agent.monitor;

export function registerFlowRoutes(app: Hono, agent: Agent): void {
  app.get("/v1/flows", (c) => {
    const monitor = monitorOf(agent);
    const params = new URL(c.req.url).searchParams;
    const filter = filterOf(params);
    const last = intParam(params, "last");
    const since = sinceParam(params);
    const follow = params.get("follow") === "true";
    const history = !follow || last !== undefined || since !== undefined;
    const q = history
      ? monitor.query({
        filter,
        ...(last !== undefined ? { last } : {}),
        ...(since ? { since } : {}),
      })
      : { flows: [], stats: monitor.stats() };
    let head = "";
    for (const flow of q.flows) head += flowNdjson(flow);
    if (!follow) {
      return new Response(head + line({ stats: q.stats }), { headers: NDJSON });
    }
    const follower = monitor.followLines(filter);
    return new Response(followStream(agent, follower, head, (text) => text), {
      headers: NDJSON,
    });
  });

  app.get("/v1/events", (c) => {
    const monitor = monitorOf(agent);
    const types = c.req.queries("type") ?? [];
    for (const t of types) {
      if (!(FLOW_TYPES as readonly string[]).includes(t)) {
        throw new ApiError(
          400,
          "invalid_filter",
          `Invalid type "${t}": expected one of ${FLOW_TYPES.join(", ")}`,
        );
      }
    }
    const follower = monitor.followEvents(types);
    return new Response(
      followStream(agent, follower, "", (e) => line({ event: eventToJson(e) })),
      { headers: NDJSON },
    );
  });
}
