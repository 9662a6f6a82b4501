// The usual footguns as tutorials, each next to its fix: an extra "-" that OR-splits one rule into
// two, empty selectors that select a whole namespace, and an egress policy that forgets DNS. This
// module is browser compatible.

import { cnp, ep, type Tutorial } from "./_tutorial.ts";

export const orSplit: Tutorial = {
  id: "footgun-or-split",
  title: 'Footgun: an extra "-" splits a rule',
  scenario: {
    name: 'Footgun: an extra "-" turns one rule into two OR-ed rules',
    description:
      "Inside one `ingress` item, `fromEndpoints` and `toPorts` are AND-ed: these peers, on these ports. Start `toPorts` with its own `-` and it becomes a second item, and items are OR-ed: `api-split` now admits the frontend on every port, and every pod on port 80.\n\n`api-fixed` has the same fields in one item and admits only the frontend, only on port 80. Compare the two columns in the matrix, then delete the extra `-` (and re-indent) in the editor.",
    policies: [
      cnp(
        "api-split",
        `
  endpointSelector:
    matchLabels:
      app: api-split
  ingress:
    # Meant as one rule, but the second "-" starts a second, OR-ed rule.
    - fromEndpoints:
        - matchLabels:
            app: frontend
    - toPorts:
        - ports:
            - port: "80"
              protocol: TCP
`,
      ),
      cnp(
        "api-fixed",
        `
  endpointSelector:
    matchLabels:
      app: api-fixed
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: frontend
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
`,
      ),
    ],
    endpoints: [
      ep("frontend", { app: "frontend" }, "10.0.4.10"),
      ep("intruder", { app: "intruder" }, "10.0.4.66"),
      ep("api-split", { app: "api-split" }, "10.0.4.20"),
      ep("api-fixed", { app: "api-fixed" }, "10.0.4.21"),
    ],
    queries: [
      {
        name: "split: any pod reaches port 80",
        from: "intruder",
        to: "api-split",
        port: 80,
        expect: "allowed",
      },
      {
        name: "split: the frontend reaches every port",
        from: "frontend",
        to: "api-split",
        port: 5432,
        expect: "allowed",
      },
      {
        name: "fixed: other pods are dropped",
        from: "intruder",
        to: "api-fixed",
        port: 80,
        expect: "denied",
      },
      {
        name: "fixed: the frontend on port 80",
        from: "frontend",
        to: "api-fixed",
        port: 80,
        expect: "allowed",
      },
      {
        name: "fixed: the frontend on another port is dropped",
        from: "frontend",
        to: "api-fixed",
        port: 5432,
        expect: "denied",
      },
    ],
  },
};

export const emptySelectors: Tutorial = {
  id: "footgun-empty-selectors",
  title: "Footgun: empty selectors",
  scenario: {
    name: "Footgun: empty selectors select the whole namespace",
    description:
      'An empty selector is not "nothing", it is "everything" in the policy\'s namespace. This policy was meant to let only the api reach the database, but `endpointSelector: {}` selects every endpoint in namespace `shop`, so web and api become default-deny for ingress too, and `fromEndpoints: [{}]` admits every endpoint of `shop` to port 5432. Endpoints in other namespaces stay out, because a CiliumNetworkPolicy\'s selectors are scoped to its own namespace.\n\nThe fix: `endpointSelector: {matchLabels: {app: db}}` and `fromEndpoints: [{matchLabels: {app: api}}]`. Try it in the editor and watch the queries turn red: they describe the broken behaviour.',
    namespaces: [{ name: "shop" }, { name: "tools" }],
    policies: [cnp(
      "db-ingress",
      `
  endpointSelector: {}   # every endpoint of "shop"
  ingress:
    - fromEndpoints:
        - {}               # every endpoint of "shop"
      toPorts:
        - ports:
            - port: "5432"
              protocol: TCP
`,
      "shop",
    )],
    endpoints: [
      ep("web", { app: "web" }, "10.0.5.10", "shop"),
      ep("api", { app: "api" }, "10.0.5.20", "shop"),
      ep("db", { app: "db" }, "10.0.5.30", "shop"),
      ep("scanner", { app: "scanner" }, "10.0.6.10", "tools"),
    ],
    queries: [
      {
        name: "web reaches the database",
        from: "web",
        to: "db",
        port: 5432,
        expect: "allowed",
      },
      {
        name: "the api reaches the database",
        from: "api",
        to: "db",
        port: 5432,
        expect: "allowed",
      },
      {
        name: "another namespace does not",
        from: "scanner",
        to: "db",
        port: 5432,
        expect: "denied",
      },
      {
        name: "web can no longer call the api: it is selected too",
        from: "web",
        to: "api",
        port: 8080,
        expect: "denied",
      },
    ],
  },
};

export const forgottenDns: Tutorial = {
  id: "footgun-dns",
  title: "Footgun: forgetting DNS",
  scenario: {
    name: "Footgun: egress default deny blocks DNS",
    description:
      "The first egress rule that selects an endpoint makes all of its egress default-deny, including the DNS lookups it needs before connecting anywhere. `client` may call the api on 8080 but cannot resolve its name: UDP 53 to kube-dns is dropped. `client-fixed` adds the usual rule for kube-dns on port 53 (UDP and TCP), with a DNS rule so that the DNS proxy can see the names.\n\nThe matrix shows UDP port 53; switch it to TCP 8080 to see both clients reach the api.",
    namespaces: [{ name: "default" }, { name: "kube-system" }],
    policies: [
      cnp(
        "client-egress",
        `
  endpointSelector:
    matchLabels:
      app: client
  egress:
    - toEndpoints:
        - matchLabels:
            app: api
      toPorts:
        - ports:
            - port: "8080"
              protocol: TCP
`,
      ),
      cnp(
        "client-fixed-egress",
        `
  endpointSelector:
    matchLabels:
      app: client-fixed
  egress:
    - toEndpoints:
        - matchLabels:
            app: api
      toPorts:
        - ports:
            - port: "8080"
              protocol: TCP
    - toEndpoints:
        - matchLabels:
            k8s:io.kubernetes.pod.namespace: kube-system
            k8s-app: kube-dns
      toPorts:
        - ports:
            - port: "53"
              protocol: UDP
            - port: "53"
              protocol: TCP
          rules:
            dns:
              - matchPattern: "*"
`,
      ),
    ],
    endpoints: [
      ep("client", { app: "client" }, "10.0.7.10"),
      ep("client-fixed", { app: "client-fixed" }, "10.0.7.11"),
      ep("api", { app: "api" }, "10.0.7.20"),
      ep("kube-dns", { "k8s-app": "kube-dns" }, "10.0.0.10", "kube-system"),
    ],
    queries: [
      {
        name: "client cannot resolve names",
        from: "client",
        to: "kube-dns",
        port: 53,
        protocol: "UDP",
        expect: "denied",
      },
      {
        name: "client reaches the api",
        from: "client",
        to: "api",
        port: 8080,
        expect: "allowed",
      },
      {
        name: "client-fixed resolves names",
        from: "client-fixed",
        to: "kube-dns",
        port: 53,
        protocol: "UDP",
        expect: "allowed",
      },
      {
        name: "client-fixed reaches the api",
        from: "client-fixed",
        to: "api",
        port: 8080,
        expect: "allowed",
      },
    ],
  },
};
