// The visibility commands that parse their own flags (Hubble's filter vocabulary does not fit
// the global flag table): `observe`, `monitor`, `bpf`, `connectivity`, `service`, `fqdn`.
// cli/main.ts hands them their arguments before it parses anything.

import { observe } from "./observe.ts";
import { monitor } from "./monitor.ts";
import { bpf } from "./bpf.ts";
import { connectivity } from "./connectivity.ts";
import { service } from "./service.ts";
import { fqdn } from "./fqdn.ts";

export const VISIBILITY_COMMANDS: Record<string, (argv: string[]) => Promise<number>> = {
  observe,
  monitor,
  bpf,
  connectivity,
  service,
  fqdn,
};
