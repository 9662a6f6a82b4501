// Error classes callers branch on. This module is browser compatible.

export interface ValidationIssue {
  message: string;
  /** Path inside the document, e.g. `spec.ingress[0].toPorts[1]`; "" for the document itself. */
  path: string;
  line?: number;
  column?: number;
  file?: string;
  /** Name of the policy the issue is in, when known. */
  policy?: string;
  /** For warnings: the lint rule id that silences it (`cilia.io/lint-ignore`, `--disable`). */
  code?: string;
}

export function formatIssue(i: ValidationIssue): string {
  const where = [i.file, i.line !== undefined ? `${i.line}:${i.column ?? 1}` : undefined]
    .filter(Boolean).join(":");
  const path = i.path ? ` at ${i.path}` : "";
  return `${where ? where + ": " : ""}${i.message}${path}`;
}

/** A policy document is invalid; `issues` lists every problem with its location. */
export class PolicyValidationError extends Error {
  override name = "PolicyValidationError";
  readonly issues: ValidationIssue[];

  constructor(issues: ValidationIssue[], options?: { cause?: unknown }) {
    const first = issues[0];
    const head = first ? formatIssue(first) : "Invalid policy";
    super(issues.length > 1 ? `${head} (and ${issues.length - 1} more)` : head, options);
    this.issues = issues;
  }

  get path(): string {
    return this.issues[0]?.path ?? "";
  }

  get line(): number | undefined {
    return this.issues[0]?.line;
  }

  get column(): number | undefined {
    return this.issues[0]?.column;
  }
}

/**
 * A flow to evaluate names a peer that does not exist or cannot be one: an unknown endpoint or
 * entity, an IP that does not parse. Bad input, never a bug (the agent's API answers 400).
 */
export class FlowInputError extends RangeError {
  override name = "FlowInputError";
}

/** The WASM engine refused a message or trapped. */
export class EngineError extends Error {
  override name = "EngineError";
  readonly status: number;

  constructor(message: string, status: number, options?: { cause?: unknown }) {
    super(message, options);
    this.status = status;
  }
}
