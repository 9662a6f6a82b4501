/**
 * Reading requests: JSON bodies validated by zod, numeric path ids, `k=v,…` label lists, all
 * failing with a 400 that names the problem. Nothing here touches agent state.
 */

import type { Context } from "hono";
import type { z } from "zod";
import { parseLabelList } from "@cilia/policy-wasm";
import { ApiError, validate } from "./errors.ts";

/**
 * The body as text. A body the client cut off (it went away, the connection was reset) is a 400
 * for that client, not an agent failure; anything else (the body limit's error) goes on as is.
 */
export async function bodyText(c: Context): Promise<string> {
  try {
    return await c.req.text();
  } catch (err) {
    if (
      err instanceof Deno.errors.BadResource || err instanceof Deno.errors.Http ||
      err instanceof Deno.errors.ConnectionReset || err instanceof Deno.errors.BrokenPipe ||
      err instanceof Deno.errors.UnexpectedEof
    ) {
      throw new ApiError(
        400,
        "aborted_request",
        "The request body was cut off: the client went away",
      );
    }
    throw err;
  }
}

/** The JSON body, validated by `schema`. */
export async function jsonBody<S extends z.ZodType>(
  c: Context,
  schema: S,
  what: string,
): Promise<z.output<S>> {
  const text = await bodyText(c);
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

/** `app=web,tier=1` → {app: "web", tier: "1"}, by parseLabelList()'s rules. */
export function labelList(text: string, what: string): Record<string, string> {
  try {
    return parseLabelList(text, what);
  } catch (err) {
    if (err instanceof SyntaxError) throw new ApiError(400, "invalid_request", err.message);
    throw err;
  }
}
