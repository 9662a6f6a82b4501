// The L7 request tester: from, to and port, then an HTTP request (method, path, host, header
// lines) or a Kafka request (API key, version, client id, topics); it shows the engine's verdict
// and explanation as the user types, and can keep the request as a scenario query. This module
// is browser compatible (it needs a DOM).

import { type FlowInput, flowOf, KAFKA_API_KEYS, queryName } from "../../policy-wasm/mod.ts";
import { fill, h } from "./dom.ts";
import { explanation, sourceLinks } from "./explanation.ts";
import { type EndpointRow, parseHeaders, type ScenarioQuery } from "./model.ts";
import type { FlowOutcome, SourceSpan } from "./simulation.ts";

export interface L7Events {
  /** The engine's outcome, or undefined when the workspace does not load. */
  judge(input: FlowInput): FlowOutcome | undefined;
  onAddQuery(q: ScenarioQuery): void;
  /** Highlight the YAML lines that decided (the "Decided by" links). */
  onShowSource(span: SourceSpan): void;
}

type Kind = "http" | "kafka";

const input = (props: Record<string, string>) =>
  h("input", { spellcheck: "false", autocomplete: "off", ...props });

export class L7Tester {
  #events: L7Events;
  #kind: Kind = "http";
  #f = {
    from: h("select", { "data-testid": "l7-from", "aria-label": "From" }),
    to: h("select", { "data-testid": "l7-to", "aria-label": "To" }),
    port: input({ type: "number", min: "1", max: "65535", value: "80", "data-testid": "l7-port" }),
    method: input({ value: "GET", list: "http-methods", "data-testid": "l7-method" }),
    path: input({ value: "/", "data-testid": "l7-path" }),
    host: input({ placeholder: "optional", "data-testid": "l7-host" }),
    headers: h("textarea", {
      rows: 3,
      placeholder: "X-Token: 12345",
      spellcheck: "false",
      "data-testid": "l7-headers",
    }),
    apiKey: h(
      "select",
      { "data-testid": "l7-apikey" },
      ...Object.keys(KAFKA_API_KEYS).map((k) => h("option", { value: k }, k)),
    ),
    apiVersion: input({ type: "number", placeholder: "any", "data-testid": "l7-apiversion" }),
    clientId: input({ placeholder: "optional", "data-testid": "l7-clientid" }),
    topics: input({ placeholder: "topic1,topic2", "data-testid": "l7-topics" }),
  };
  #tabs: Record<Kind, HTMLButtonElement>;
  #forms: Record<Kind, HTMLElement>;
  #result = h("div", { class: "l7-result", "data-testid": "l7-result" });

  constructor(el: HTMLElement, events: L7Events) {
    this.#events = events;
    const f = this.#f;
    const field = (label: string, control: HTMLElement, cls = "") =>
      h("label", { class: `field ${cls}` }, h("span", {}, label), control);
    this.#tabs = {
      http: h("button", { type: "button", "data-kind": "http" }, "HTTP"),
      kafka: h("button", { type: "button", "data-kind": "kafka" }, "Kafka"),
    };
    this.#forms = {
      http: h(
        "div",
        { class: "form-grid" },
        field("Method", f.method, "narrow"),
        field("Path", f.path, "wide"),
        field("Host", f.host),
        field("Headers (one per line, Name: value)", f.headers, "full"),
        h(
          "datalist",
          { id: "http-methods" },
          ...["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"].map((m) =>
            h("option", { value: m })
          ),
        ),
      ),
      kafka: h(
        "div",
        { class: "form-grid" },
        field("API key", f.apiKey),
        field("API version", f.apiVersion, "narrow"),
        field("Client ID", f.clientId),
        field("Topics (comma-separated)", f.topics, "wide"),
      ),
    };
    for (const kind of ["http", "kafka"] as const) {
      this.#tabs[kind].addEventListener("click", () => this.#setKind(kind));
    }
    fill(
      el,
      h(
        "div",
        { class: "form-grid" },
        field("From", f.from),
        field("To", f.to),
        field("Port", f.port, "narrow"),
        h(
          "div",
          { class: "field" },
          h("span", {}, "Protocol"),
          h(
            "div",
            { class: "segmented", role: "group", "data-testid": "l7-kind" },
            this.#tabs.http,
            this.#tabs.kafka,
          ),
        ),
      ),
      this.#forms.http,
      this.#forms.kafka,
      this.#result,
    );
    el.addEventListener("input", () => this.refresh());
    el.addEventListener("change", () => this.refresh());
    this.#setKind("http");
  }

  #setKind(kind: Kind): void {
    this.#kind = kind;
    for (const k of ["http", "kafka"] as const) {
      this.#tabs[k].setAttribute("aria-pressed", String(k === kind));
      this.#forms[k].hidden = k !== kind;
    }
    this.refresh();
  }

  /** Offers the workspace's endpoints in From and To, keeping the current choice. */
  setEndpoints(rows: readonly EndpointRow[]): void {
    const counts = new Map<string, number>();
    for (const r of rows) counts.set(r.name, (counts.get(r.name) ?? 0) + 1);
    const refs = rows.filter((r) => r.name !== "").map((r) =>
      counts.get(r.name)! > 1 ? `${r.namespace ?? "default"}/${r.name}` : r.name
    );
    for (const [sel, fallback] of [[this.#f.from, 0], [this.#f.to, 1]] as const) {
      const keep = sel.value;
      fill(sel, ...refs.map((r) => h("option", { value: r }, r)));
      sel.value = refs.includes(keep) ? keep : (refs[fallback] ?? refs[0] ?? "");
    }
  }

  /** Sets from, to and port, e.g. from a matrix cell. */
  prefill(o: { from: string; to: string; port: number }): void {
    this.#f.from.value = o.from;
    this.#f.to.value = o.to;
    this.#f.port.value = String(o.port);
    this.refresh();
  }

  /** Sets the request fields of the HTTP or Kafka form. */
  setRequest(q: Pick<ScenarioQuery, "http" | "kafka">): void {
    const f = this.#f;
    if (q.http) {
      f.method.value = q.http.method;
      f.path.value = q.http.path;
      f.host.value = q.http.host ?? "";
      f.headers.value = Object.entries(q.http.headers ?? {}).map(([k, v]) => `${k}: ${v}`)
        .join("\n");
      this.#setKind("http");
    } else if (q.kafka) {
      f.apiKey.value = String(q.kafka.apiKey);
      f.apiVersion.value = q.kafka.apiVersion !== undefined ? String(q.kafka.apiVersion) : "";
      f.clientId.value = q.kafka.clientID ?? "";
      f.topics.value = [...(q.kafka.topics ?? []), ...(q.kafka.topic ? [q.kafka.topic] : [])]
        .join(",");
      this.#setKind("kafka");
    }
  }

  /** The form as a scenario query, or an error message. */
  query(): ScenarioQuery | { error: string } {
    const f = this.#f;
    const port = Number(f.port.value);
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      return { error: `Invalid port "${f.port.value}": expected 1-65535` };
    }
    const base = { from: f.from.value, to: f.to.value, port, protocol: "TCP" as const };
    if (!base.from || !base.to) return { error: "Add endpoints to test a request" };
    if (this.#kind === "http") {
      const headers = parseHeaders(f.headers.value);
      if ("error" in headers) return headers;
      const host = f.host.value.trim();
      return {
        ...base,
        http: {
          method: f.method.value.trim() || "GET",
          path: f.path.value || "/",
          ...(host ? { host } : {}),
          ...(Object.keys(headers.headers).length > 0 ? { headers: headers.headers } : {}),
        },
      };
    }
    const version = f.apiVersion.value.trim();
    const topics = f.topics.value.split(",").map((t) => t.trim()).filter((t) => t !== "");
    const clientID = f.clientId.value.trim();
    return {
      ...base,
      kafka: {
        apiKey: f.apiKey.value,
        ...(version !== "" ? { apiVersion: Number(version) } : {}),
        ...(clientID ? { clientID } : {}),
        ...(topics.length > 0 ? { topics } : {}),
      },
    };
  }

  /** Re-evaluates the request (after any change to the form or the workspace). */
  refresh(): void {
    const q = this.query();
    if ("error" in q) {
      fill(this.#result, h("p", { class: "error-text" }, q.error));
      return;
    }
    let outcome: FlowOutcome | undefined;
    try {
      outcome = this.#events.judge(flowOf(q));
    } catch (e) {
      fill(
        this.#result,
        h("p", { class: "error-text" }, e instanceof Error ? e.message : String(e)),
      );
      return;
    }
    if (!outcome) {
      fill(
        this.#result,
        h("p", { class: "empty" }, "Fix the errors in the policies or endpoints to test requests."),
      );
      return;
    }
    const what = q.http
      ? `${q.http.method} ${q.http.path}`
      : `Kafka ${q.kafka!.apiKey}${q.kafka!.topics ? " " + q.kafka!.topics.join(",") : ""}`;
    const add = h("button", {
      type: "button",
      class: "small",
      "data-testid": "l7-add-query",
      onclick: () => this.#events.onAddQuery({ ...q, expect: outcome.verdict }),
    }, "Add as query");
    const sources = sourceLinks(outcome.sources, (s) => this.#events.onShowSource(s));
    fill(this.#result, explanation(`${queryName(q, outcome)}  ${what}`, outcome, [add], sources));
  }
}
