// toErrorBody(), the API's one error mapping: each domain error maps by its class to a status and
// code; what is not a domain error (a RangeError or TypeError from a bug, a plain Error) is a 500
// whatever its message says, and a kvstore failure is a 503 only when it is a KvStoreError.
import assert from "node:assert/strict";
import { z } from "zod";
import { EngineError, FlowInputError, PolicyValidationError } from "../../policy-wasm/mod.ts";
import { ApiError, toErrorBody } from "../../agent/api/errors.ts";
import { EndpointConflictError, EndpointNotFoundError } from "../../agent/endpoint/manager.ts";
import { PolicyNotFoundError } from "../../agent/policy/repository.ts";
import { IpamExhaustedError, IpamNotFoundError, IpamRangeError } from "../../agent/ipam/ipam.ts";
import { IdentityExhaustedError } from "../../agent/identity/allocator.ts";
import { KvStoreError, LeaseExpiredError } from "../../agent/kvstore/errors.ts";

const STORE = "Deno KV at /tmp/x";

function mapped(err: unknown): [number, string] {
  const { status, body } = toErrorBody(err, STORE);
  return [status, body.error.code];
}

Deno.test("toErrorBody(): domain errors map by class", () => {
  const zodError = z.object({ a: z.string() }).safeParse({}).error!;
  const cases: [string, unknown, number, string][] = [
    ["ApiError", new ApiError(422, "custom", "m"), 422, "custom"],
    ["PolicyValidationError", new PolicyValidationError([]), 400, "invalid_policy"],
    ["EngineError", new EngineError("refused", -5), 400, "policy_rejected"],
    ["FlowInputError", new FlowInputError(`Unknown entity "moon"`), 400, "invalid_request"],
    ["EndpointNotFoundError", new EndpointNotFoundError("gone"), 404, "endpoint_not_found"],
    ["EndpointConflictError", new EndpointConflictError("taken"), 409, "endpoint_conflict"],
    ["PolicyNotFoundError", new PolicyNotFoundError("none"), 404, "policy_not_found"],
    ["IpamNotFoundError", new IpamNotFoundError("none"), 404, "address_not_found"],
    ["IpamRangeError", new IpamRangeError("outside"), 400, "invalid_address"],
    ["IpamExhaustedError", new IpamExhaustedError("full"), 503, "ipam_exhausted"],
    ["IdentityExhaustedError", new IdentityExhaustedError("full"), 503, "identity_exhausted"],
    ["ZodError", zodError, 400, "invalid_request"],
    [
      "KvStoreError",
      new KvStoreError("put", "k", `Cannot put "k" in ${STORE}: x`),
      503,
      "kvstore_unavailable",
    ],
    [
      "LeaseExpiredError",
      new LeaseExpiredError("7", "lease 7 expired"),
      503,
      "kvstore_unavailable",
    ],
  ];
  for (const [name, err, status, code] of cases) {
    assert.deepEqual(mapped(err), [status, code], name);
  }
  const kv = toErrorBody(new KvStoreError("get", "k", "Cannot get"), STORE).body.error;
  assert.equal(kv.hint, `check that the kvstore (${STORE}) is reachable`);
});

Deno.test("toErrorBody(): bugs are 500s, whatever their class or message", () => {
  const cases: [string, unknown][] = [
    ["RangeError", new RangeError("Invalid array length")],
    ["TypeError", new TypeError("Cannot read properties of undefined (reading 'id')")],
    ["SyntaxError", new SyntaxError("Unexpected token } in JSON")],
    ["a plain Error worded like a kvstore failure", new Error(`Cannot put "k" in ${STORE}: x`)],
    ["a plain Error worded like a validation error", new Error("Invalid request: bad input")],
    ["a thrown string", "boom"],
  ];
  for (const [name, err] of cases) {
    const { status, body } = toErrorBody(err, STORE);
    assert.deepEqual([status, body.error.code], [500, "internal"], name);
    assert.match(body.error.message, /^Internal error: /, name);
  }
});
