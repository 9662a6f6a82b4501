// Serves the built simulator (web/dist/) as static files: GET and HEAD only, `/` → index.html,
// no directory listings, no path escapes. It serves what the build produced and never builds.
// `deno task web` (web/serve.ts) serves it at the root; a `prefix` mounts it under a path. Text
// files go out gzip-compressed when the client accepts it; every file has a strong ETag (a hash of
// its bytes) and `cache-control: no-cache`, so a revisit revalidates and gets 304 Not Modified.

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  json: "application/json",
  svg: "image/svg+xml",
  png: "image/png",
  ico: "image/x-icon",
  wasm: "application/wasm",
  yaml: "text/yaml; charset=utf-8",
  txt: "text/plain; charset=utf-8",
};

export interface ServeSimulatorOptions {
  /** Directory of the built files; default web/dist/. */
  root?: string | URL;
  /** URL path the simulator is mounted at; default "/". */
  prefix?: string;
}

/** The default directory served: web/dist/. */
export const DEFAULT_ROOT: URL = new URL("./dist/", import.meta.url);

function text(status: number, body: string, headers: HeadersInit = {}): Response {
  return new Response(body, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...headers },
  });
}

/** The file path under the root for a request path, or undefined when it is not servable. */
function fileFor(pathname: string, prefix: string): string | undefined {
  if (!pathname.startsWith(prefix)) return undefined;
  let rel: string;
  try {
    rel = decodeURIComponent(pathname.slice(prefix.length));
  } catch {
    return undefined;
  }
  if (rel === "" || rel.endsWith("/")) rel += "index.html";
  const parts = rel.split("/");
  if (parts.some((p) => p === ".." || p === "." || p.startsWith(".")) || /[\\\0]/.test(rel)) {
    return undefined;
  }
  return parts.filter((p) => p !== "").join("/");
}

/** Answers a request for the simulator's files. */
export async function serveSimulator(
  req: Request,
  opts: ServeSimulatorOptions = {},
): Promise<Response> {
  if (req.method !== "GET" && req.method !== "HEAD") {
    return text(405, `Method ${req.method} not allowed: expected GET or HEAD`, {
      allow: "GET, HEAD",
    });
  }
  const prefix = (opts.prefix ?? "/").replace(/\/?$/, "/");
  const pathname = new URL(req.url).pathname;
  if (pathname === prefix.slice(0, -1) && prefix !== "/") {
    return new Response(null, { status: 308, headers: { location: prefix } });
  }
  const rel = fileFor(pathname, prefix);
  if (rel === undefined) return text(404, `Not found: "${pathname}"`);
  const root = new URL(String(opts.root ?? DEFAULT_ROOT).replace(/\/?$/, "/"), "file:///");
  let body: Uint8Array;
  try {
    body = await Deno.readFile(new URL(rel, root));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.IsADirectory) {
      return text(404, `Not found: "${pathname}"`);
    }
    throw e;
  }
  const ext = rel.slice(rel.lastIndexOf(".") + 1).toLowerCase();
  const file = await encoded(rel, body);
  const gzip = COMPRESSIBLE.has(ext) && /\bgzip\b/.test(req.headers.get("accept-encoding") ?? "");
  const sent = gzip ? file.gzip : body;
  const etag = gzip ? `"${file.hash}-gz"` : `"${file.hash}"`;
  const headers: Record<string, string> = {
    "content-type": TYPES[ext] ?? "application/octet-stream",
    "cache-control": "no-cache",
    etag,
    vary: "accept-encoding",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
  };
  const match = req.headers.get("if-none-match");
  if (match !== null && match.split(",").map((t) => t.trim()).includes(etag)) {
    return new Response(null, { status: 304, headers });
  }
  headers["content-length"] = String(sent.length);
  if (gzip) headers["content-encoding"] = "gzip";
  return new Response(req.method === "HEAD" ? null : sent as Uint8Array<ArrayBuffer>, { headers });
}

const COMPRESSIBLE = new Set(["html", "js", "css", "json", "svg", "wasm", "yaml", "txt"]);

interface Encoded {
  hash: string;
  gzip: Uint8Array;
}

/** Hash and gzip of a file's bytes, kept while the bytes stay the same. */
const encodedCache = new Map<string, { bytes: Uint8Array; value: Encoded }>();

async function encoded(rel: string, bytes: Uint8Array): Promise<Encoded> {
  const hit = encodedCache.get(rel);
  if (hit && hit.bytes.length === bytes.length && hit.bytes.every((b, i) => b === bytes[i])) {
    return hit.value;
  }
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>),
  );
  const hash = [...digest.slice(0, 12)].map((b) => b.toString(16).padStart(2, "0")).join("");
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  const gzip = new Uint8Array(await new Response(stream).arrayBuffer());
  const value = { hash, gzip };
  encodedCache.set(rel, { bytes, value });
  return value;
}
