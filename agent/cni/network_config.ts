/**
 * The shape of a CNI network configuration as cilia-cni reads it from stdin, checked by hand: the
 * spec's `cniVersion`, `name` and `type`, cilia's `agentSocket`, labels in `args.cni.labels`, the
 * runtime's `prevResult` and GC's `cni.dev/valid-attachments`; every other key passes through.
 * Not zod on purpose: the plugin is exec'd once per pod and loading zod costs more than the rest
 * of its start (see `deno task bench cni`); the agent validates the request it gets with zod.
 * Pure: no I/O, no errors thrown; the caller turns a problem into the CNI error object.
 */

export interface NetworkConfig {
  cniVersion: string;
  name: string;
  type: string;
  agentSocket?: string;
  args?: { cni?: { labels?: { key: string; value: string }[]; [key: string]: unknown } };
  prevResult?: unknown;
  "cni.dev/valid-attachments"?: { containerID: string; ifname: string }[];
  [key: string]: unknown;
}

/** What is wrong: `path` like `args.cni.labels.0.key` ("" for the whole document). */
export interface ConfigProblem {
  path: string;
  /** True when the field is absent from an object that should hold it. */
  missing: boolean;
  message: string;
}

class Problem extends Error {
  constructor(readonly problem: ConfigProblem) {
    super(problem.message);
  }
}

const typeName = (v: unknown) => v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
const join = (path: string, key: string | number) => path === "" ? String(key) : `${path}.${key}`;

function fail(path: string, message: string, missing = false): never {
  throw new Problem({ path, missing, message });
}

function object(v: unknown, path: string): Record<string, unknown> {
  if (!isObject(v)) fail(path, `expected an object, got ${typeName(v)}`);
  return v;
}

function string(o: Record<string, unknown>, key: string, at: string, nonEmpty: boolean): void {
  const path = join(at, key);
  if (!Object.hasOwn(o, key)) fail(path, `missing field "${path}"`, true);
  const v = o[key];
  if (typeof v !== "string") fail(path, `expected a string, got ${typeName(v)}`);
  if (nonEmpty && v === "") fail(path, "expected a non-empty string");
}

function optional(o: Record<string, unknown>, key: string, check: (v: unknown) => void): void {
  if (o[key] !== undefined) check(o[key]);
}

function array(v: unknown, path: string, item: (x: unknown, path: string) => void): void {
  if (!Array.isArray(v)) fail(path, `expected an array, got ${typeName(v)}`);
  v.forEach((x, i) => item(x, join(path, i)));
}

function label(v: unknown, path: string): void {
  const o = object(v, path);
  string(o, "key", path, true);
  string(o, "value", path, false);
  const extra = Object.keys(o).filter((k) => k !== "key" && k !== "value");
  if (extra.length > 0) fail(path, `unknown field "${extra[0]}": a label has "key" and "value"`);
}

function attachment(v: unknown, path: string): void {
  const o = object(v, path);
  string(o, "containerID", path, false);
  string(o, "ifname", path, false);
}

function check(value: unknown): NetworkConfig {
  const conf = object(value, "");
  for (const key of ["cniVersion", "name", "type"]) string(conf, key, "", true);
  optional(conf, "agentSocket", () => string(conf, "agentSocket", "", true));
  optional(conf, "args", (args) => {
    optional(object(args, "args"), "cni", (cni) => {
      optional(object(cni, "args.cni"), "labels", (l) => array(l, "args.cni.labels", label));
    });
  });
  optional(conf, "cni.dev/valid-attachments", (a) => {
    array(a, "cni.dev/valid-attachments", attachment);
  });
  return conf as NetworkConfig;
}

/** The configuration when `value` has the shape, otherwise the first problem found. */
export function checkNetworkConfig(
  value: unknown,
): { ok: true; config: NetworkConfig } | { ok: false; problem: ConfigProblem } {
  try {
    return { ok: true, config: check(value) };
  } catch (err) {
    if (err instanceof Problem) return { ok: false, problem: err.problem };
    throw err;
  }
}
