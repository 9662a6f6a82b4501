// The one registry of `cilia` commands: name, summary, usage, flags and an example for each. The
// global help page, every command's own `--help`, `cilia help CMD` and the shell completions are
// rendered from it (help.ts, completion.ts); dispatch stays in main.ts and live.ts. To add a
// command, add an entry here (group "live" for commands that talk to the agent). This module is
// browser compatible.

export interface FlagHelp {
  /** The long name without dashes ("src-ip"). */
  name: string;
  short?: string;
  /** The value's placeholder ("IP"); absent for boolean flags. */
  arg?: string;
  help: string;
}

export interface CommandSpec {
  /** The words that name the command: "policy trace". */
  name: string;
  group: "offline" | "live" | "other";
  summary: string;
  usage: string;
  flags?: FlagHelp[];
  /** One or more lines a user can paste. */
  example: string;
  /** Extra paragraphs after the flags (exit codes, notes). */
  details?: string;
  /** The command parses its own flags and prints its own `--help` (observe, monitor, bpf). */
  ownHelp?: boolean;
}

const OUTPUT: FlagHelp = { name: "output", short: "o", arg: "FORMAT", help: "table, json or yaml" };
const HOST: FlagHelp = {
  name: "host",
  short: "H",
  arg: "URL",
  help: "the agent's API (unix:///path); default $CILIA_HOST or /var/run/cilia/cilia.sock",
};

export const GLOBAL_FLAGS: FlagHelp[] = [
  { name: "help", short: "h", help: "show help for the command" },
  { name: "version", help: "print the version and the engine's build id" },
  { name: "no-color", help: "no colour (also off when not a terminal or with NO_COLOR set)" },
];

export const EXIT_CODES = `Exit codes:
  0  success (lint: no warnings)
  1  the command failed: invalid policy, failed query, agent error
  2  usage error: unknown command or flag, a bad flag value
  3  policy lint: warnings only, every file is valid`;

const TRAFFIC_INPUT: FlagHelp = {
  name: "input",
  arg: "FILE",
  help: 'flows: "observe -o json" or "hubble observe -o json" output (- for stdin)',
};
const TRAFFIC_AGENT: FlagHelp[] = [
  { name: "from-agent", help: "read the agent's flows instead of a file" },
  { name: "last", arg: "N", help: "with --from-agent: the last N flows (default 4095)" },
  HOST,
];

const peerFlags = (side: "src" | "dst"): FlagHelp[] => [
  { name: `${side}-labels`, arg: "K=V,…", help: `the ${side} as an ad-hoc endpoint with labels` },
  { name: `${side}-ip`, arg: "IP", help: `the ${side} by address (outside the cluster: world)` },
  { name: `${side}-entity`, arg: "ENTITY", help: "world, host, remote-node, kube-apiserver, …" },
  { name: `${side}-endpoint`, arg: "NAME", help: "an endpoint of --scenario (or NS/NAME live)" },
  { name: `${side}-namespace`, arg: "NS", help: "the namespace of --" + side + "-labels" },
];

const L7_FLAGS: FlagHelp[] = [
  { name: "dport", arg: "PORT/PROTO", help: "destination port and protocol, e.g. 80/TCP, ICMP" },
  { name: "icmp-type", arg: "N", help: "ICMP type (with --dport ICMP)" },
  { name: "http-method", arg: "M", help: "an HTTP request: method" },
  { name: "http-path", arg: "P", help: "an HTTP request: path" },
  { name: "http-host", arg: "H", help: "an HTTP request: host" },
  { name: "http-header", arg: "'K: V'", help: "an HTTP request header (repeatable)" },
  { name: "kafka-role", arg: "ROLE", help: "a Kafka request: produce or consume" },
  { name: "kafka-api-key", arg: "K", help: "a Kafka request: API key (produce, fetch, …)" },
  { name: "kafka-topic", arg: "T", help: "a Kafka request: topic (repeatable)" },
  { name: "kafka-client-id", arg: "C", help: "a Kafka request: client id" },
];

export const COMMANDS: CommandSpec[] = [
  {
    name: "policy validate",
    group: "offline",
    summary: "check policy files; located errors, exit 1 when one is invalid",
    usage: "cilia policy validate FILE|DIR|- …",
    flags: [OUTPUT, { name: "allow-empty", help: "an empty input is a warning, not an error" }],
    example: "cilia policy validate examples/policies/three-tier.yaml",
  },
  {
    name: "policy lint",
    group: "offline",
    summary: "warn about footguns across a set of policy files",
    usage: "cilia policy lint FILE|DIR|- … | --live [FILE …]",
    flags: [
      OUTPUT,
      { name: "disable", arg: "RULE,…", help: "skip these lint rules (repeatable)" },
      { name: "allow-empty", help: "an empty input is a warning, not an error" },
      {
        name: "live",
        help: "check selector keys against the agent's endpoints; no FILE: lint its policies",
      },
      HOST,
    ],
    example: "cilia policy lint examples/policies/ --disable dns-blocked",
    details:
      `The files are linted as one set, as they would be applied together. Silence a rule for one
policy with the annotation  cilia.io/lint-ignore: RULE[,RULE].
Rules: or-split, empty-selector, allow-all, dns-blocked, fqdn-no-dns, dead-allow, l7-bypassed,
empty-peers, key-typo, empty-direction, cidr-host-bits, translation.
With --live, key-typo also flags a selector key that none of the agent's endpoints carries.
Exit: 0 no warnings, 1 an invalid file, 3 warnings only.`,
  },
  {
    name: "policy test",
    group: "offline",
    summary: 'run scenario files ("policy tests"); exit 1 on a failed query',
    usage: "cilia policy test SCENARIO … [--junit FILE]",
    flags: [OUTPUT, { name: "junit", arg: "FILE", help: "also write a JUnit XML report" }],
    example: "cilia policy test examples/policies/*.scenario.yaml",
    details:
      `A scenario may reference policy files relative to itself:  policies: [{file: three-tier.yaml}]`,
  },
  {
    name: "policy trace",
    group: "offline",
    summary: "judge one flow and print the decision chain (live with --src/--dst-endpoint)",
    usage: "cilia policy trace --policy FILE … | --scenario FILE  SRC DST --dport PORT/PROTO",
    flags: [
      OUTPUT,
      { name: "policy", arg: "FILE", help: "policy file (repeatable; positionals too)" },
      { name: "scenario", arg: "FILE", help: "take policies, endpoints and namespaces from it" },
      ...peerFlags("src"),
      ...peerFlags("dst"),
      ...L7_FLAGS,
      HOST,
    ],
    example: `cilia policy trace --policy examples/policies/http-get-public.yaml \\
  --src-labels app=frontend --dst-labels app=backend --dport 80/TCP \\
  --http-method GET --http-path /public/a`,
  },
  {
    name: "policy replay",
    group: "offline",
    summary: "judge observed flows again with a draft policy: what it would cut or open",
    usage: "cilia policy replay --policy DRAFT … --input FLOWS.json|- | --from-agent [--last N]",
    flags: [
      { name: "output", short: "o", arg: "FORMAT", help: "table or json" },
      { name: "policy", arg: "FILE", help: "the draft policy (repeatable; positionals too)" },
      TRAFFIC_INPUT,
      ...TRAFFIC_AGENT,
    ],
    example: `cilia observe --last 1000 -o json > flows.json
cilia policy replay --policy draft.yaml --input flows.json`,
    details:
      `Reads cilia's "observe -o json" and Hubble's "hubble observe -o json" output. Each distinct
connection (peers by identity labels, protocol, port, HTTP method and path) is judged once; the
connections whose verdict would change are listed, newly denied first, with the draft's reason.
Exit: 0 nothing allowed today would be denied, 1 something would (or the command failed).`,
  },
  {
    name: "policy suggest",
    group: "offline",
    summary: "least-privilege CiliumNetworkPolicies for the observed connections, with tests",
    usage: "cilia policy suggest --input FLOWS.json|- | --from-agent [--scenario-out FILE]",
    flags: [
      { name: "output", short: "o", arg: "FORMAT", help: "yaml (default) or json" },
      TRAFFIC_INPUT,
      ...TRAFFIC_AGENT,
      { name: "scenario-out", arg: "FILE", help: "also write a scenario testing the policies" },
    ],
    example:
      `cilia policy suggest --input flows.json --scenario-out suggested.scenario.yaml > suggested.yaml
cilia policy test suggested.scenario.yaml`,
    details:
      `One policy per workload: ingress from the peers that reached it, egress to the peers it reached
(workloads by identity labels and namespace, outside addresses as toCIDR, or toFQDNs when DNS
answers named them), the observed ports, HTTP rules from L7 flows, DNS to the observed DNS server.
Dropped connections are not allowed. The scenario expects every observed connection allowed and
near misses (another port, an unseen peer, another request) denied.`,
  },
  {
    name: "ui",
    group: "live",
    summary: "the simulator in the browser, live on this node (read-only bridge, access token)",
    usage: "cilia ui [--listen 127.0.0.1:12000] [--allow-remote]",
    flags: [
      { name: "listen", arg: "HOST:PORT", help: "where to listen (default 127.0.0.1:12000)" },
      { name: "allow-remote", help: "allow a non-loopback --listen address" },
      { name: "web-dir", arg: "DIR", help: "the built simulator (default web/dist)" },
      HOST,
    ],
    example: "cilia ui   # then open the printed URL",
    details:
      `The bridge forwards GET requests only (endpoints, identities, policies, flows, status). Every
request needs the random token of the printed URL; without it the answer is 401.`,
  },
  {
    name: "policy import",
    group: "live",
    summary: "add or replace policies in the agent",
    usage: "cilia policy import FILE …",
    flags: [OUTPUT, HOST],
    example: "cilia policy import examples/policies/three-tier.yaml",
  },
  {
    name: "policy get",
    group: "live",
    summary: "list the agent's policies, or one by name",
    usage: "cilia policy get [NAME] [-n NS] [--kind K] [--labels K=V,…]",
    flags: [
      OUTPUT,
      { name: "namespace", short: "n", arg: "NS", help: "the policy's namespace" },
      { name: "kind", arg: "KIND", help: "CiliumNetworkPolicy, NetworkPolicy, …" },
      { name: "labels", arg: "K=V,…", help: "policies whose labels match" },
      HOST,
    ],
    example: "cilia policy get -o yaml",
  },
  {
    name: "policy delete",
    group: "live",
    summary: "remove policies from the agent",
    usage: "cilia policy delete NAME [-n NS] [--kind K] | --labels K=V,… | --all",
    flags: [
      OUTPUT,
      { name: "namespace", short: "n", arg: "NS", help: "the policy's namespace" },
      { name: "kind", arg: "KIND", help: "CiliumNetworkPolicy, NetworkPolicy, …" },
      { name: "labels", arg: "K=V,…", help: "every policy whose labels match" },
      { name: "all", help: "every policy" },
      HOST,
    ],
    example: "cilia policy delete frontend -n default",
  },
  {
    name: "status",
    group: "live",
    summary: "the agent's health, kvstore, identities, endpoints and policy revision",
    usage: "cilia status [--brief] [--wait [--timeout 30s]]",
    flags: [
      OUTPUT,
      { name: "brief", help: "one line: OK or the first warning" },
      { name: "wait", help: "wait until the agent is healthy" },
      { name: "timeout", arg: "DURATION", help: "how long --wait waits (30s)" },
      HOST,
    ],
    example: "cilia status --wait --timeout 10s",
  },
  {
    name: "endpoint list",
    group: "live",
    summary: "the endpoints of this node",
    usage: "cilia endpoint list",
    flags: [OUTPUT, HOST],
    example: "cilia endpoint list -o yaml",
  },
  {
    name: "endpoint get",
    group: "live",
    summary: "one endpoint by id or NS/NAME",
    usage: "cilia endpoint get ID|NS/NAME",
    flags: [OUTPUT, HOST],
    example: "cilia endpoint get default/frontend",
  },
  {
    name: "identity list",
    group: "live",
    summary: "security identities and their labels",
    usage: "cilia identity list",
    flags: [OUTPUT, HOST],
    example: "cilia identity list",
  },
  {
    name: "identity get",
    group: "live",
    summary: "one identity by number",
    usage: "cilia identity get ID",
    flags: [OUTPUT, HOST],
    example: "cilia identity get 2",
  },
  {
    name: "node list",
    group: "live",
    summary: "the nodes of the cluster",
    usage: "cilia node list",
    flags: [OUTPUT, HOST],
    example: "cilia node list",
  },
  {
    name: "ipam",
    group: "live",
    summary: "address allocations: list, allocate [--family 4|6] [--owner O], release IP",
    usage: "cilia ipam [list] | allocate [--family 4|6] [--owner O] | release IP",
    flags: [
      OUTPUT,
      { name: "family", arg: "4|6", help: "address family to allocate from" },
      { name: "owner", arg: "NAME", help: "who holds the address" },
      HOST,
    ],
    example: "cilia ipam allocate --family 4 --owner test",
  },
  {
    name: "observe",
    group: "live",
    summary: "flows with both sides' labels, the verdict and the policy that decided",
    usage: "cilia observe [filters] [--since 5m|TIME] [--last N] [-f|--follow] [-o FORMAT]",
    details: 'Run "cilia observe --help" for the filters (Hubble\'s vocabulary).',
    example: "cilia observe --verdict DROPPED --to-pod default/db --last 20",
    ownHelp: true,
  },
  {
    name: "monitor",
    group: "live",
    summary: "the datapath's raw events, live, one line each",
    usage: "cilia monitor [--type drop|trace|policy-verdict]… [-o json] [-H unix:///path]",
    example: "cilia monitor --type drop",
    ownHelp: true,
  },
  {
    name: "bpf",
    group: "live",
    summary: "the kernel's maps as the agent reads them: policy, ct, ipcache",
    usage:
      "cilia bpf policy get ENDPOINT | ct list | ipcache list | nat list  [-o FORMAT] [-H URL]",
    example: "cilia bpf policy get default/frontend",
    ownHelp: true,
  },
  {
    name: "service",
    group: "live",
    summary:
      "services (ClusterIP, NodePort, LoadBalancer): create (upsert), list, get, delete, import Kubernetes YAML",
    usage: "cilia service create --frontend IP:PORT[/PROTO] --backends IP:PORT[*W],... | " +
      "list | get ID | delete ID | import FILE  [-o FORMAT] [-H URL]",
    example:
      "cilia service create --frontend 10.96.0.10:80/TCP --backends 10.200.0.3:8080,10.200.0.4:8080",
    ownHelp: true,
  },
  {
    name: "fqdn cache",
    group: "live",
    summary: "what the DNS proxy learned for toFQDNs: list per endpoint, clean (-f)",
    usage: "cilia fqdn cache list [--endpoint NS/NAME|ID] [--name NAME] | " +
      "clean -f [--endpoint NS/NAME|ID] [--name NAME]  [-o FORMAT] [-H URL]",
    details: "--name is exact and case-insensitive. clean refuses without -f (exit 2); after it, " +
      "new connections to the forgotten addresses are denied until the pod resolves the name again.",
    example: "cilia fqdn cache list --endpoint default/client --name api.example.com -o json",
    ownHelp: true,
  },
  {
    name: "connectivity test",
    group: "other",
    summary: "end-to-end suite: a lab of namespaces, real packets, drops checked against flows",
    usage: "cilia connectivity test [--test REGEX] [--nodes 1|2] [-o table|json]",
    details: "Needs root. Builds and removes its own lab (also on Ctrl-C); exit 1 when a case " +
      "failed. Families: no-policy, allow-all, ingress/egress default deny, entities, labels, " +
      "namespaces, icmp, cidr, deny-over-allow, audit. --nodes 2: the backend on a second " +
      "node (one etcd, tunnel mode), so every pod-to-pod case crosses nodes.",
    example: 'cilia connectivity test --test "deny|cidr"',
    ownHelp: true,
  },
  {
    name: "help",
    group: "other",
    summary: "help for a command",
    usage: "cilia help [COMMAND …]",
    example: "cilia help policy trace",
  },
  {
    name: "completion",
    group: "other",
    summary: "print a shell completion script (bash, zsh or fish)",
    usage: "cilia completion bash|zsh|fish",
    example: `cilia completion bash > ~/.local/share/bash-completion/completions/cilia
cilia completion fish > ~/.config/fish/completions/cilia.fish`,
  },
];

/** Adds a command (for modules that bring their own commands). */
export function registerCommand(spec: CommandSpec): void {
  const i = COMMANDS.findIndex((c) => c.name === spec.name);
  if (i >= 0) COMMANDS[i] = spec;
  else COMMANDS.push(spec);
}

/** The longest registered command that the words start with ("policy trace x" → policy trace). */
export function findCommand(words: readonly string[]): CommandSpec | undefined {
  for (let n = Math.min(words.length, 3); n > 0; n--) {
    const name = words.slice(0, n).join(" ");
    const hit = COMMANDS.find((c) => c.name === name);
    if (hit) return hit;
  }
  return undefined;
}

/** Registered commands below a prefix word ("policy" → validate, lint, …). */
export function subcommands(prefix: string): CommandSpec[] {
  return COMMANDS.filter((c) => c.name.startsWith(`${prefix} `));
}
