/**
 * Reading requests: JSON bodies validated by zod, numeric path ids, `k=v,…` label lists, all
 * failing with a 400 that names the problem. Nothing here touches agent state.
 */

import type { Context } from "hono";
import type { z } from "zod";
import { ApiError, validate } from "./errors.ts";

/** The JSON body, validated by `schema`. */
export async function jsonBody<S extends z.ZodType>(
  c: Context,
  schema: S,
  what: string,
): Promise<z.output<S>> {
  const text = await c.req.text();
  if (text.trim() === "") {
    throw new ApiError(400, "invalid_request", `Missing ${what}: the body is empty`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ApiError(
      400,
      "invalid_json",
      `Invalid ${what}: the body is not JSON: ${(err as Error).message}`,
    );
  }
  return validate(schema, value, what);
}

/** An endpoint id from the path: 1-65535. */
export function endpointId(text: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) {
    throw new ApiError(
      400,
      "invalid_request",
      `Invalid endpoint id "${text}": expected a number from 1 to 65535`,
    );
  }
  return Number(text);
}

/** `app=web,tier=1` → {app: "web", tier: "1"}. */
export function labelList(text: string, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const eq = part.indexOf("=");
    if (eq <= 0) {
      throw new ApiError(
        400,
        "invalid_request",
        `Invalid label "${part}" in ${what}: expected key=value`,
      );
    }
    out[part.slice(0, eq)] = part.slice(eq + 1);
  }
  return out;
}
