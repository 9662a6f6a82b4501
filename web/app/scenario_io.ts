// Scenario files and share links: YAML export in the `cilia policy test` format (policies as block
// literals, endpoints one per line), and the `#scenario=<base64url of the scenario JSON>` link.
// Everything read back goes through the engine's loadScenario(), so imports and links are
// validated exactly as the CLI validates them. This module is browser compatible.

import { Document, isMap, isSeq } from "yaml";
import {
  decodeBase64,
  encodeBase64Url,
  type LoadedScenario,
  loadScenario,
  type Scenario,
} from "../../policy-wasm/mod.ts";

const HASH_KEY = "scenario=";

/** The scenario as a YAML file that `cilia policy test` runs. */
export function scenarioYaml(s: Scenario): string {
  const doc = new Document(s);
  const endpoints = doc.get("endpoints", true);
  if (isSeq(endpoints)) { for (const e of endpoints.items) if (isMap(e)) e.flow = true; }
  const queries = doc.get("queries", true);
  if (isSeq(queries)) {
    for (const q of queries.items) {
      if (!isMap(q)) continue;
      for (const key of ["http", "kafka", "from", "to"]) {
        const v = q.get(key, true);
        if (isMap(v)) v.flow = true;
      }
    }
  }
  return doc.toString({ lineWidth: 100 });
}

/** `http-allow-only-get.scenario.yaml` from the scenario's name. */
export function scenarioFileName(s: Scenario): string {
  const slug = (s.name ?? "scenario").toLowerCase().replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "").slice(0, 60);
  return `${slug || "scenario"}.scenario.yaml`;
}

/** `scenario=<base64url>`: the location hash (without "#") that opens this scenario. */
export function shareHash(s: Scenario): string {
  return HASH_KEY + encodeBase64Url(new TextEncoder().encode(JSON.stringify(s)));
}

/** The scenario of a location hash, or undefined when the hash names none. Throws when invalid. */
export function scenarioFromHash(hash: string): LoadedScenario | undefined {
  const params = hash.replace(/^#/, "").split("&");
  const param = params.find((p) => p.startsWith(HASH_KEY));
  if (!param) return undefined;
  let json: string;
  try {
    json = new TextDecoder("utf-8", { fatal: true }).decode(
      decodeBase64(param.slice(HASH_KEY.length)),
    );
  } catch (cause) {
    throw new SyntaxError("Invalid share link: the scenario is not base64url of UTF-8 JSON", {
      cause,
    });
  }
  return loadScenario(json, "shared scenario");
}
