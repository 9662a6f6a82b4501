/**
 * The fuzz tests' seed state: a policy that uses every part of the engine's message format
 * (label selectors with expressions, CIDR with except, entities, named ports, port ranges, deny,
 * requires, HTTP with headers and headerMatches, Kafka, DNS), a small cluster for it, and the
 * queries whose answers pin the engine's state.
 */

import type { EndpointInput, QueryInput } from "../../policy-wasm/mod.ts";

export const SEED_POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fuzz-seed, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints:
        - {matchLabels: {app: client}}
        - {matchExpressions: [{key: tier, operator: In, values: [web, api]}]}
      toPorts:
        - ports: [{port: "80", protocol: TCP}, {port: http-alt, protocol: TCP}]
          rules:
            http:
              - {method: "GET|HEAD", path: "/public/.*", host: "example\\\\.com"}
              - method: POST
                path: "/api/v[0-9]+/items"
                headers: ["X-Token"]
                headerMatches: [{name: X-Env, value: prod}, {name: X-Log, value: "1", mismatch: LOG}]
        - ports: [{port: "9092", protocol: TCP}]
          rules:
            kafka: [{role: produce, topic: orders}, {apiKey: fetch, clientID: c1}]
    - fromCIDRSet: [{cidr: 10.1.0.0/16, except: [10.1.2.0/24]}]
      toPorts: [{ports: [{port: "443", endPort: 445, protocol: TCP}]}]
    - fromEntities: [host]
  ingressDeny:
    - fromCIDR: [192.168.0.0/16]
  egress:
    - toEndpoints: [{matchLabels: {app: dns}}]
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
          rules:
            dns: [{matchPattern: "*.example.com"}, {matchName: "cilium.io"}]
    - toCIDR: [2001:db8::/32]
    - toPorts: [{ports: [{port: "8080", protocol: ANY}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fuzz-requires, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: server}}]
      toPorts: [{ports: [{port: "22", protocol: TCP}]}]
  ingress:
    - fromRequires: [{matchLabels: {tier: web}}]
    - fromEndpoints: [{}]
      toPorts: [{ports: [{port: "7000", protocol: TCP}]}]
  egress:
    - toEndpoints: [{matchLabels: {app: server}}]
  egressDeny:
    - toPorts: [{ports: [{port: "25", protocol: TCP}]}]
`;

export const SEED_ENDPOINTS: EndpointInput[] = [
  { name: "client", labels: { app: "client", tier: "web" }, ip: "10.0.0.1", ipv6: "fd00::1" },
  {
    name: "server",
    labels: { app: "server" },
    ip: "10.0.0.2",
    ports: [{ name: "http-alt", port: 8081, protocol: "TCP" }],
  },
  { name: "dns", labels: { app: "dns" }, ip: "10.0.0.3" },
  { name: "other", labels: { app: "other", tier: "db" }, ip: "10.0.0.4" },
];

/** Queries over the seed state (endpoint ids are SimCluster's: 1-based positions). */
export function seedQueries(id: (name: string) => number): QueryInput[] {
  const server = 2, client = 1, dns = 3;
  return [
    { endpoint: server, direction: "ingress", peer: id("client"), proto: 6, port: 80 },
    {
      endpoint: server,
      direction: "ingress",
      peer: id("client"),
      proto: 6,
      port: 80,
      http: { method: "GET", path: "/public/a", host: "example.com" },
    },
    {
      endpoint: server,
      direction: "ingress",
      peer: id("client"),
      proto: 6,
      port: 80,
      http: { method: "POST", path: "/api/v1/items", headers: { "x-token": "t", "x-env": "prod" } },
    },
    {
      endpoint: server,
      direction: "ingress",
      peer: id("client"),
      proto: 6,
      port: 9092,
      kafka: { apiKey: 0, apiVersion: 3, clientID: "c1", topics: ["orders", "x"] },
    },
    { endpoint: server, direction: "ingress", peer: id("other"), proto: 6, port: 80 },
    { endpoint: server, direction: "ingress", peer: 1, proto: 6, port: 1234 },
    { endpoint: server, direction: "ingress", peer: 2, proto: 17, port: 53 },
    {
      endpoint: server,
      direction: "egress",
      peer: id("dns"),
      proto: 17,
      port: 53,
      dns: "a.example.com",
    },
    {
      endpoint: server,
      direction: "egress",
      peer: id("dns"),
      proto: 17,
      port: 53,
      dns: "evil.com",
    },
    { endpoint: client, direction: "ingress", peer: id("client"), proto: 6, port: 7000 },
    { endpoint: client, direction: "ingress", peer: id("other"), proto: 6, port: 7000 },
    { endpoint: client, direction: "egress", peer: id("server"), proto: 6, port: 25 },
    { endpoint: dns, direction: "egress", peer: id("server"), proto: 6, port: 8080 },
    { endpoint: client, direction: "ingress", peer: id("server"), proto: 6, port: 22 },
  ];
}

export const SEED_LOOKUPS = [
  "10.0.0.1",
  "10.0.0.9",
  "10.1.3.4",
  "10.1.2.7",
  "192.168.1.1",
  "fd00::1",
  "2001:db8::5",
  "8.8.8.8",
];
