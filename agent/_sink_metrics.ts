/**
 * A DatapathSink wrapper that times every endpoint write (attach, policy diff) into the
 * regeneration histogram, the way `_kv_metrics.ts` counts kvstore operations. It forwards every
 * call unchanged and lets errors through.
 */

import type { DatapathSink } from "./endpoint/datapath_sink.ts";
import type { Histogram } from "./metrics.ts";

export function timedSink(sink: DatapathSink, h: Histogram): DatapathSink {
  const timed = async <T>(fn: () => T | Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      h.observe((performance.now() - t0) / 1000);
    }
  };
  return {
    attach: (ep, flags, change) => timed(() => sink.attach(ep, flags, change)),
    updateEndpoint: (ep, flags) => sink.updateEndpoint(ep, flags),
    removeEndpoint: (ep) => sink.removeEndpoint(ep),
    applyPolicy: (id, change) => timed(() => sink.applyPolicy(id, change)),
    updateIpcache: (u, d) => sink.updateIpcache(u, d),
    ...(sink.check ? { check: (ep) => sink.check!(ep) } : {}),
  };
}
