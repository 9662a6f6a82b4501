// The demo's services scene (issue #13): two more pods, `web-1` and `web-2` (app=web), each
// answering HTTP on 8080 with its own name; a ClusterIP service default/web 10.96.0.10:80 in front
// of them made with `cilia service create`; examples/policies/web-service.yaml lets the frontend
// reach app=web on 8080 (an egress rule naming the backends' labels: policy sees the backend,
// never the service address). Then, with real packets through lib/lb.h: 16 connections from the
// frontend to the service address spread over both backends, and `cilia observe --service` shows
// the frontend next to the chosen backend. Returns how many outcomes were not the expected ones.
// The servers are stopped before it returns; the pods and the service go with the lab.
import { type DemoLab, RUN_DIR, SOCKET } from "./_lab.ts";
import { execCommand } from "../../agent/sys/exec.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const POLICY = "examples/policies/web-service.yaml";
const VIP = "10.96.0.10";
const CONNECTIONS = 16;
const color = Deno.stdout.isTerminal() && !Deno.env.get("NO_COLOR");
const paint = (code: string) => (s: string) => color ? `\x1b[${code}m${s}\x1b[0m` : s;
const [green, red, dim, bold] = [paint("32"), paint("31"), paint("2"), paint("1")];
const say = (s = "") => console.log(s);
const row = (k: string, v: string) => say(`  ${k.padEnd(11)}${v}`);
/** `bin/cilia ARGS` against the demo's agent: its exit code and output. */
async function cilia(args: string[]) {
  const o = await new Deno.Command(`${ROOT}bin/cilia`, {
    args,
    env: { CILIA_HOST: `unix://${SOCKET}`, CILIA_DENO: Deno.execPath() },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: o.code, stdout: text(o.stdout), stderr: text(o.stderr) };
}

/** Answers every HTTP request with the pod's name (its first argument). */
const NAMED_SERVER = `
const [name] = Deno.args;
Deno.serve({ hostname: "0.0.0.0", port: 8080, onListen: () => {} }, () => new Response(name));
`;

/** One HTTP request per connection from `netns` to the service: the backend's name, or "". */
async function ask(netns: string): Promise<string> {
  const r = await execCommand([
    ...["ip", "netns", "exec", netns, "curl", "-s", "-m", "2", "-H", "Connection: close"],
    `http://${VIP}/`,
  ]);
  return r.code === 0 ? r.stdout.trim() : "";
}

export async function servicesScene(lab: DemoLab, check: () => void): Promise<number> {
  say();
  say(bold("  Services: a ClusterIP service balanced in eBPF, policy on the real backend"));
  const frontend = lab.pods.find((p) => p.name === "frontend")!;
  await Deno.writeTextFile(`${RUN_DIR}/named_server.ts`, NAMED_SERVER);
  const servers: Deno.ChildProcess[] = [];
  try {
    const backends = [];
    for (const name of ["web-1", "web-2"]) {
      const pod = await lab.addPod(name, { app: "web" });
      backends.push(pod);
      servers.push(
        new Deno.Command("ip", {
          args: ["netns", "exec", pod.netns, Deno.execPath(), "run", "--quiet", "--allow-net"]
            .concat([`${RUN_DIR}/named_server.ts`, name]),
          env: { DENO_NO_UPDATE_CHECK: "1", DENO_NO_PROMPT: "1" },
          stdin: "null",
          stdout: "null",
          stderr: "null",
        }).spawn(),
      );
    }
    row("pods (CNI)", backends.map((p) => `${p.name} ${p.ip}`).join(", ") + " app=web");
    row("policy", `bin/cilia policy import ${POLICY}: ${await lab.importPolicy(ROOT + POLICY)}`);
    const create = [
      ...["service", "create", "--frontend", `${VIP}:80/TCP`, "--name", "default/web"],
      ...["--backends", backends.map((p) => `${p.ip}:8080`).join(",")],
    ];
    const made = await cilia(create);
    if (made.code !== 0) throw new Error(`cilia service create failed: ${made.stderr.trim()}`);
    row("service", `bin/cilia ${create.join(" ")}`);
    for (const p of backends) {
      const listening = async () =>
        (await execCommand(["ss", "-Htln", "sport = :8080"], { netns: p.netns })).stdout.trim();
      for (let i = 0; !(await listening()); i++) {
        if (i === 100) throw new Error(`The demo's server in "${p.netns}" did not start`);
        await new Promise((res) => setTimeout(res, 50));
      }
    }
    // "Works within a second of the command returning" (#13): the first answer may take that.
    const first = Date.now();
    let answer = "";
    while (!(answer = await ask(frontend.netns)) && Date.now() - first < 2000) check();
    const got = [answer];
    for (let i = 1; i < CONNECTIONS; i++) {
      check();
      got.push(await ask(frontend.netns));
    }
    const count = (name: string) => got.filter((g) => g === name).length;
    const spread = backends.map((p) => `${p.name} ×${count(p.name)}`).join(", ");
    const ok = backends.every((p) => count(p.name) > 0) &&
      backends.reduce((n, p) => n + count(p.name), 0) === CONNECTIONS;
    const what = `frontend → ${VIP}:80   HTTP, ${CONNECTIONS} connections`;
    say(
      `  ${what.padEnd(52)}${ok ? green(spread) : red(`${spread}  UNEXPECTED`)}  ${
        dim("each answered by the backend lb.h chose; replies come from the service address")
      }`,
    );
    const args = ["observe", "--service", "default/web", "--from-pod", "default/frontend"]
      .concat(["--type", "trace", "--last", "2"]);
    say();
    say(bold(`  $ cilia ${args.join(" ")}`));
    const out = await cilia(args);
    const text = (out.code === 0 ? out.stdout : out.stderr).trimEnd();
    for (const l of text.split("\n")) say(`  ${l}`);
    return ok && text.includes(`via service default/web ${VIP}:80/TCP`) ? 0 : 1;
  } finally {
    for (const s of servers) {
      try {
        s.kill("SIGTERM");
      } catch { /* exited */ }
      await s.status;
    }
  }
}
