// `deno task bench <name>`: runs one benchmark. Each prints its figures and ratios against a
// baseline measured in the same run (absolute times on shared machines are noise).

const BENCHES: Record<string, string> = {
  policy: "./policy_bench.ts",
  scale: "./scale_bench.ts",
  endpoints: "./endpoints_bench.ts",
  identity: "./identity_bench.ts",
  datapath: "./datapath_bench.ts",
  cni: "./cni_bench.ts",
  churn: "./churn_bench.ts",
  import: "./import_bench.ts",
  monitor: "./monitor_bench.ts",
  l7: "./l7_bench.ts",
  dns: "./dns_bench.ts",
  multinode: "./multinode_bench.ts",
  "etcd-scale": "./etcd_scale_bench.ts",
  lb: "./lb_bench.ts",
};

const name = Deno.args[0];
if (!name || !(name in BENCHES)) {
  console.error(`Usage: deno task bench <${Object.keys(BENCHES).join("|")}> [flags]`);
  Deno.exit(2);
}
const mod = await import(BENCHES[name]!).catch((cause) => {
  console.error(
    `bench: cannot load the "${name}" benchmark: ${cause instanceof Error ? cause.message : cause}`,
  );
  Deno.exit(1);
});
await mod.main(Deno.args.slice(1));
