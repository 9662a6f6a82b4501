/**
 * The API's one error shape, `{error: {code, message, details?, hint?}}`, and the mapping from
 * the agent's typed errors to a status and code, by class and never by message text. Handlers
 * throw; `toErrorBody()` (the app's `onError`) answers. Anything unexpected, a RangeError or
 * TypeError from a bug included, is a 500 whose message is logged, never a 4xx and never a crash.
 */

import { z } from "zod";
import { EngineError, FlowInputError, PolicyValidationError } from "@cilia/policy-wasm";
import { EndpointConflictError, EndpointNotFoundError } from "../endpoint/manager.ts";
import { EndpointNotRealisedError } from "../endpoint/regenerator.ts";
import { ValueTooLargeError } from "../kvstore/errors.ts";
import { CniAttachmentError } from "../endpoint/cni_error.ts";
import { PolicyNotFoundError, PolicyTooLargeError } from "../policy/repository.ts";
import { IpamExhaustedError, IpamNotFoundError, IpamRangeError } from "../ipam/ipam.ts";
import { IdentityExhaustedError } from "../identity/allocator.ts";
import { KvStoreError, LeaseExpiredError } from "../kvstore/errors.ts";

export interface ErrorBody {
  error: { code: string; message: string; details?: unknown; hint?: string };
}

export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: { details?: unknown; hint?: string } = {},
  ) {
    super(message);
  }
}

/** zod issues as `{path, message}` with dotted paths. */
export function zodIssues(err: z.ZodError): { path: string; message: string }[] {
  return err.issues.map((i) => ({
    path: i.path.map((p) => typeof p === "number" ? `[${p}]` : `.${String(p)}`).join("")
      .replace(/^\./, ""),
    message: i.code === "unrecognized_keys"
      ? `Unknown field${i.keys.length > 1 ? "s" : ""} ${i.keys.map((k) => `"${k}"`).join(", ")}`
      : i.message,
  }));
}

/** Parses `value` with `schema` or throws a 400 naming every problem. */
export function validate<S extends z.ZodType>(
  schema: S,
  value: unknown,
  what: string,
): z.output<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issues = zodIssues(r.error);
  const first = issues[0]!;
  throw new ApiError(
    400,
    "invalid_request",
    `Invalid ${what}: ${first.path ? `${first.path}: ` : ""}${first.message}${
      issues.length > 1 ? ` (and ${issues.length - 1} more)` : ""
    }`,
    { details: { issues } },
  );
}

/** Status and body for any error a handler threw. */
export function toErrorBody(err: unknown, storeName: string): { status: number; body: ErrorBody } {
  const e = (
    status: number,
    code: string,
    message: string,
    extra: ErrorBody["error"] | object = {},
  ) => ({
    status,
    body: { error: { code, message, ...extra } },
  });
  if (err instanceof ApiError) return e(err.status, err.code, err.message, err.extra);
  if (err instanceof PolicyValidationError) {
    return e(400, "invalid_policy", err.message, { details: { issues: err.issues } });
  }
  if (err instanceof EngineError) return e(400, "policy_rejected", err.message);
  if (err instanceof FlowInputError) return e(400, "invalid_request", err.message);
  if (err instanceof CniAttachmentError) return e(err.status, err.code, err.message);
  if (err instanceof EndpointNotFoundError) return e(404, "endpoint_not_found", err.message);
  if (err instanceof EndpointConflictError) return e(409, "endpoint_conflict", err.message);
  if (err instanceof EndpointNotRealisedError) {
    return e(503, "endpoint_not_realised", err.message, {
      hint: "nothing was kept; the datapath refused the write (see the agent log), try again",
    });
  }
  if (err instanceof PolicyTooLargeError) return e(413, "policy_too_large", err.message);
  if (err instanceof ValueTooLargeError) {
    return e(413, "value_too_large", err.message, {
      hint: "the kvstore holds smaller values: split the request",
    });
  }
  if (err instanceof PolicyNotFoundError) return e(404, "policy_not_found", err.message);
  if (err instanceof IpamNotFoundError) return e(404, "address_not_found", err.message);
  if (err instanceof IpamRangeError) return e(400, "invalid_address", err.message);
  if (err instanceof IpamExhaustedError) {
    return e(503, "ipam_exhausted", err.message, {
      hint: "release addresses (cilia ipam release IP) or give the node a larger --pod-cidr",
    });
  }
  if (err instanceof IdentityExhaustedError) {
    return e(503, "identity_exhausted", err.message, {
      hint: "unused identities are released after the grace period (--identity-gc-grace)",
    });
  }
  if (err instanceof z.ZodError) {
    const issues = zodIssues(err);
    return e(400, "invalid_request", `Invalid request: ${issues[0]?.message ?? "bad input"}`, {
      details: { issues },
    });
  }
  // Past this point nothing is the client's fault: a kvstore outage is a 503, anything else (a
  // RangeError or TypeError from a bug included) a 500.
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof LeaseExpiredError || err instanceof KvStoreError) {
    return e(503, "kvstore_unavailable", message, {
      hint: `check that the kvstore (${storeName}) is reachable`,
    });
  }
  return e(500, "internal", `Internal error: ${message}`);
}
