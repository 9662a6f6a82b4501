// The shipped Grafana dashboard's PromQL, for the tests that check it: the metric-name test
// (metrics_dashboard_test.ts) and the real-Prometheus test (tests/e2e/prometheus_test.ts).

export const DASHBOARD = new URL("../../examples/grafana/cilia-dashboard.json", import.meta.url)
  .pathname;

/** Every PromQL expression in a dashboard: panel targets and templating queries. */
export function dashboardExprs(dashboard: unknown): string[] {
  const out: string[] = [];
  const walk = (v: unknown, key: string) => {
    if (typeof v === "string" && (key === "expr" || key === "query" || key === "definition")) {
      out.push(v);
    } else if (Array.isArray(v)) v.forEach((x) => walk(x, key));
    else if (v && typeof v === "object") {
      for (const [k, x] of Object.entries(v)) walk(x, k);
    }
  };
  walk(dashboard, "");
  return out.filter((e) => e !== "prometheus");
}

/** `cilia_*` metric names an expression uses. */
export function metricNames(expr: string): string[] {
  return [...expr.matchAll(/\bcilia_[a-z0-9_]+/g)].map((m) => m[0]);
}
