// Shapes and builders shared by the tutorial data. This module is browser compatible.

import type { z } from "zod";
import type { ScenarioSchema } from "../../policy-wasm/mod.ts";

export interface Tutorial {
  id: string;
  title: string;
  scenario: z.input<typeof ScenarioSchema>;
}

/** A CiliumNetworkPolicy document with the given spec body. */
export const cnp = (name: string, body: string, namespace = "default") =>
  `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: ${name}
  namespace: ${namespace}
spec:
${body.replace(/^\n/, "")}`;

/** A scenario endpoint. */
export const ep = (
  name: string,
  labels: Record<string, string>,
  ip: string,
  namespace = "default",
) => ({
  name,
  namespace,
  labels,
  ip,
});
