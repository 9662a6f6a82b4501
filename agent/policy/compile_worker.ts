/**
 * The worker behind PolicyCompiler (compiler.ts): compiles policy sources with `compilePolicies`
 * (and splits them into documents when asked) off the agent's event loop, with its own policy
 * engine instance for regex checks. It answers each request with plain data: the spec, the
 * warnings and the documents, or the validation issues. It holds no state between requests.
 */

import { compilePolicies, PolicyEngine, PolicyValidationError } from "@cilia/policy-wasm";
import { splitDocuments } from "./documents.ts";
import type { CompileReply, CompileRequest } from "./compiler.ts";

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<CompileRequest>) => void) | null;
  postMessage(m: CompileReply): void;
};
const engine = PolicyEngine.create();

scope.onmessage = async ({ data: req }) => {
  try {
    const e = await engine;
    const r = compilePolicies(req.sources, {
      clusterName: req.clusterName,
      regexCheck: (p) => e.checkRegex(p),
      ...(req.services ? { services: req.services } : {}),
    });
    const docs = req.split ? req.sources.flatMap((s) => splitDocuments(s.text)) : undefined;
    scope.postMessage({
      id: req.id,
      ok: true,
      spec: r.spec,
      warnings: r.warnings,
      ...(docs ? { docs } : {}),
    });
  } catch (err) {
    scope.postMessage({
      id: req.id,
      ok: false,
      name: err instanceof Error ? err.name : "Error",
      message: err instanceof Error ? err.message : String(err),
      ...(err instanceof PolicyValidationError ? { issues: err.issues } : {}),
    });
  }
};
