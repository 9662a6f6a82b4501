// The product's three examples as tutorials: HTTP GET /public only, Kafka produce/consume on one
// topic, a required X-Token header. This module is browser compatible.

import { cnp, ep, type Tutorial } from "./_tutorial.ts";

export const httpGetPublic: Tutorial = {
  id: "http-get-public",
  title: "HTTP: allow only GET /public/.*",
  scenario: {
    name: "HTTP: allow only GET /public/.*",
    description:
      "Layer 7 rules narrow what an allowed connection may do. This policy selects the backend and lets only the frontend connect on TCP port 80; on that connection only `GET` requests whose path matches `/public/.*` pass. Any other request is answered by the proxy with HTTP 403, and every other pod is dropped at L3/L4.\n\nTry it: click the frontend → backend cell of the matrix (port 80), then send `GET /private` or `POST /public/a` in the L7 request tab. Paths are full-match regular expressions, so `/public/.*` does not match `/publicity`.",
    policies: [cnp(
      "backend-get-public",
      `
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: frontend
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
          rules:
            http:
              - method: GET
                path: "/public/.*"
`,
    )],
    endpoints: [
      ep("frontend", { app: "frontend" }, "10.0.1.10"),
      ep("backend", { app: "backend" }, "10.0.1.20"),
      ep("monitoring", { app: "monitoring" }, "10.0.1.30"),
    ],
    queries: [
      {
        name: "frontend may GET /public/index.html",
        from: "frontend",
        to: "backend",
        port: 80,
        http: { method: "GET", path: "/public/index.html" },
        expect: "allowed",
      },
      {
        name: "GET /private is answered with 403",
        from: "frontend",
        to: "backend",
        port: 80,
        http: { method: "GET", path: "/private" },
        expect: "denied",
      },
      {
        name: "POST /public/upload is answered with 403",
        from: "frontend",
        to: "backend",
        port: 80,
        http: { method: "POST", path: "/public/upload" },
        expect: "denied",
      },
      {
        name: "/publicity is not under /public/",
        from: "frontend",
        to: "backend",
        port: 80,
        http: { method: "GET", path: "/publicity" },
        expect: "denied",
      },
      {
        name: "monitoring cannot connect at all",
        from: "monitoring",
        to: "backend",
        port: 80,
        http: { method: "GET", path: "/public/index.html" },
        expect: "denied",
      },
      {
        name: "the frontend cannot use another port",
        from: "frontend",
        to: "backend",
        port: 8080,
        expect: "denied",
      },
    ],
  },
};

export const kafkaTopics: Tutorial = {
  id: "kafka-produce-consume",
  title: "Kafka: one producer, one consumer",
  scenario: {
    name: "Kafka: service1 produces to topic1, service2 consumes it",
    description:
      "Kafka rules work per request: the broker's port is open to both services, but each Produce, Fetch or Metadata request is checked against the rules. `role: produce` admits the requests a producer needs, `role: consume` those a consumer needs, both limited to `topic: topic1`. A request outside them gets Kafka error 29 (TOPIC_AUTHORIZATION_FAILED) and service3 cannot connect at all.\n\nTry it: in the L7 request tab pick service2 → kafka, port 9092, Kafka, and compare API key `fetch` with `produce`, or change the topic.",
    policies: [cnp(
      "kafka-topic1",
      `
  endpointSelector:
    matchLabels:
      app: kafka
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: service1
      toPorts:
        - ports:
            - port: "9092"
              protocol: TCP
          rules:
            kafka:
              - role: produce
                topic: topic1
    - fromEndpoints:
        - matchLabels:
            app: service2
      toPorts:
        - ports:
            - port: "9092"
              protocol: TCP
          rules:
            kafka:
              - role: consume
                topic: topic1
`,
    )],
    endpoints: [
      ep("service1", { app: "service1" }, "10.0.2.11"),
      ep("service2", { app: "service2" }, "10.0.2.12"),
      ep("service3", { app: "service3" }, "10.0.2.13"),
      ep("kafka", { app: "kafka" }, "10.0.2.20"),
    ],
    queries: [
      {
        name: "service1 produces to topic1",
        from: "service1",
        to: "kafka",
        port: 9092,
        kafka: { apiKey: "produce", topic: "topic1", clientID: "service1" },
        expect: "allowed",
      },
      {
        name: "service1 may not produce to topic2",
        from: "service1",
        to: "kafka",
        port: 9092,
        kafka: { apiKey: "produce", topic: "topic2" },
        expect: "denied",
      },
      {
        name: "service1 may not consume topic1",
        from: "service1",
        to: "kafka",
        port: 9092,
        kafka: { apiKey: "fetch", topic: "topic1" },
        expect: "denied",
      },
      {
        name: "service2 consumes topic1",
        from: "service2",
        to: "kafka",
        port: 9092,
        kafka: { apiKey: "fetch", topic: "topic1", clientID: "service2" },
        expect: "allowed",
      },
      {
        name: "service2 may not produce to topic1",
        from: "service2",
        to: "kafka",
        port: 9092,
        kafka: { apiKey: "produce", topic: "topic1" },
        expect: "denied",
      },
      {
        name: "service3 cannot reach the broker",
        from: "service3",
        to: "kafka",
        port: 9092,
        kafka: { apiKey: "metadata" },
        expect: "denied",
      },
    ],
  },
};

export const tokenHeader: Tutorial = {
  id: "http-token-header",
  title: "HTTP: require an X-Token header",
  scenario: {
    name: "HTTP: every REST call must carry X-Token: [0-9]+",
    description:
      "An HTTP rule without method or path matches every request, so `headers` alone is the whole rule: a request reaches the API only when it carries an `X-Token` header whose value matches `[0-9]+` in full. Header names are case-insensitive; the value is a regular expression.\n\nTry it: in the L7 request tab send a request from client to api on port 8080 and edit the header lines, e.g. `X-Token: 12345` or `X-Token: abc`.",
    policies: [cnp(
      "api-requires-token",
      `
  endpointSelector:
    matchLabels:
      app: api
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: client
      toPorts:
        - ports:
            - port: "8080"
              protocol: TCP
          rules:
            http:
              - headers:
                  - "X-Token: [0-9]+"
`,
    )],
    endpoints: [
      ep("client", { app: "client" }, "10.0.3.10"),
      ep("api", { app: "api" }, "10.0.3.20"),
    ],
    queries: [
      {
        name: "GET with a numeric token passes",
        from: "client",
        to: "api",
        port: 8080,
        http: { method: "GET", path: "/v1/orders", headers: { "X-Token": "12345" } },
        expect: "allowed",
      },
      {
        name: "POST with a token passes too",
        from: "client",
        to: "api",
        port: 8080,
        http: { method: "POST", path: "/v1/orders", headers: { "x-token": "7" } },
        expect: "allowed",
      },
      {
        name: "no token: 403",
        from: "client",
        to: "api",
        port: 8080,
        http: { method: "GET", path: "/v1/orders" },
        expect: "denied",
      },
      {
        name: "a token that is not a number: 403",
        from: "client",
        to: "api",
        port: 8080,
        http: { method: "GET", path: "/v1/orders", headers: { "X-Token": "abc" } },
        expect: "denied",
      },
    ],
  },
};
