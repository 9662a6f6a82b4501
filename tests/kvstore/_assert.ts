/**
 * The few assertions the kvstore tests need, with messages that show byte values readably
 * (`Uint8Array[1,2]`). Other suites use `node:assert/strict`; moving these tests to it is a
 * mechanical follow-up.
 */

export class AssertionError extends Error {
  override name = "AssertionError";
}

function show(v: unknown): string {
  if (v instanceof Uint8Array) return `Uint8Array[${v.join(",")}]`;
  try {
    return JSON.stringify(v, (_, x) => x instanceof Uint8Array ? `Uint8Array[${x.join(",")}]` : x);
  } catch {
    return String(v);
  }
}

function same(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (a instanceof Uint8Array && b instanceof Uint8Array) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length &&
    ka.every((k) => same((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

export function assert(cond: unknown, message = "expected a truthy value"): asserts cond {
  if (!cond) throw new AssertionError(message);
}

export function assertEquals(actual: unknown, expected: unknown, message?: string): void {
  if (!same(actual, expected)) {
    throw new AssertionError(
      `${message ? `${message}: ` : ""}expected ${show(expected)}, got ${show(actual)}`,
    );
  }
}

export function assertNotEquals(actual: unknown, unexpected: unknown): void {
  if (same(actual, unexpected)) throw new AssertionError(`expected anything but ${show(actual)}`);
}

export function assertMatch(actual: string, pattern: RegExp): void {
  if (!pattern.test(actual)) {
    throw new AssertionError(`expected ${show(actual)} to match ${pattern}`);
  }
}

/** Awaits `p`, expecting it to reject with an instance of `type` (or any error matching a RegExp). */
export async function assertRejects(
  p: Promise<unknown>,
  // deno-lint-ignore no-explicit-any
  expected: (new (...args: any[]) => Error) | RegExp,
): Promise<Error> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  if (err === undefined) throw new AssertionError(`expected a rejection, got a value`);
  const ok = expected instanceof RegExp
    ? expected.test(String((err as Error)?.message ?? err))
    : err instanceof expected;
  if (!ok) throw new AssertionError(`expected a rejection matching ${expected}, got ${err}`);
  return err as Error;
}
