/**
 * A child process for the two-process Deno KV test: opens the store at `Deno.args[0]` and does
 * `Deno.args[1]` compare-and-swap increments of the counter `Deno.args[2]`.
 */

import { openKvStore } from "../../agent/kvstore/kvstore.ts";

const [url, count, key] = Deno.args as [string, string, string];
const store = await openKvStore(url);
try {
  await store.createIfAbsent(key, new TextEncoder().encode("0"));
  for (let done = 0; done < Number(count);) {
    const e = (await store.get(key))!;
    const next = Number(new TextDecoder().decode(e.value)) + 1;
    if (await store.compareAndSwap(key, e.revision, new TextEncoder().encode(String(next)))) done++;
  }
} finally {
  await store.close();
}
