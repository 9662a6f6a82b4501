/**
 * `cilia-agent` (`deno task agent -- [flags]`): reads flags and the config file, starts the
 * Agent with its API on the unix socket, and stops it cleanly on SIGTERM or SIGINT (a second
 * signal exits at once). Exit codes: 0 after a clean stop, 1 when it cannot start, 2 on bad flags.
 */

import { ConfigError, loadConfig, USAGE } from "./config.ts";
import { Agent } from "./agent.ts";
import { Logger } from "./log.ts";
import { createApi } from "./api/app.ts";
import { serveApi } from "./api/server.ts";
import { useShellPool } from "./sys/exec.ts";

export async function main(argv: string[]): Promise<number> {
  let loaded;
  try {
    // `deno task agent -- --flag` passes the "--" through.
    loaded = await loadConfig(argv[0] === "--" ? argv.slice(1) : argv);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(`cilia-agent: ${err.message}\nRun "cilia-agent --help" for the flags.`);
    return 2;
  }
  if (loaded.help || loaded.config === undefined) {
    console.log(USAGE);
    return 0;
  }
  const config = loaded.config;
  const log = new Logger({ level: config.logLevel, fields: { node: config.nodeName } });
  let started: Agent | undefined;
  // ip, tc and bpftool run in a few long-lived shells: a fork of the agent each costs it more.
  const shells = await useShellPool();
  try {
    started = await Agent.start({ config, log });
    const server = await serveApi(createApi(started), config.socket, log.child({ subsys: "api" }));
    started.onClose(server);
  } catch (err) {
    log.error("cannot start the agent", { error: err });
    await started?.close();
    await shells.close();
    return 1;
  }
  const agent = started;
  const stopped = Promise.withResolvers<string>();
  const signals: Deno.Signal[] = ["SIGTERM", "SIGINT"];
  let stopping = false;
  const handlers = signals.map((sig) => {
    const h = () => {
      if (stopping) {
        log.warn("second signal: exiting now", { signal: sig });
        Deno.exit(1);
      }
      stopping = true;
      stopped.resolve(sig);
    };
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });
  const signal = await stopped.promise;
  log.info("stopping", { signal });
  await agent.close();
  await shells.close();
  for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
