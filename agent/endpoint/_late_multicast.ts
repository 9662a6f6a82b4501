/**
 * Deletes the ff00::/8 routes of host sides that the kernel made only after their link-up batch
 * (netdev.ts deletes the route in that batch). The kernel makes a link's IPv6 routes when the
 * link comes up if it is ready then, else when its link watch sees the carrier (a work item run
 * soon after, off the batch); a host side that got ESRCH in its batch is deleted from here, in
 * one rtnetlink batch for all that wait, retried with backoff (100 ms … 3.2 s) until done or
 * given up. It never touches another route, and a failure here costs only the per-packet walk the
 * route brings back, never an ADD.
 */

import { ESRCH, routeDelMulticast, rtnetlink } from "../sys/rtnetlink.ts";

const FIRST_MS = 100, TRIES = 6;

/** ifindex → the host side's name and how many deletes found nothing yet. */
const waiting = new Map<number, { name: string; tries: number }>();
let timer: ReturnType<typeof setTimeout> | undefined;
let delay = FIRST_MS;

/** A host side whose ff00::/8 route was not there yet: delete it once the kernel makes it. */
export function deleteMulticastLater(ifindex: number, name: string): void {
  waiting.set(ifindex, { name, tries: 0 });
  delay = FIRST_MS;
  schedule();
}

/** How many host sides wait for their delete (tests, status). */
export function lateMulticastWaiting(): number {
  return waiting.size;
}

function schedule(): void {
  if (timer !== undefined || waiting.size === 0) return;
  const t = timer = setTimeout(sweep, delay);
  Deno.unrefTimer(t); // never what keeps the agent (or a test) running
}

async function sweep(): Promise<void> {
  const links = [...waiting];
  try {
    const errnos = await rtnetlink(links.map(([index, w]) => routeDelMulticast(index, w.name)));
    links.forEach(([index, w], i) => {
      // ESRCH: not made yet, or the link is gone (an ADD undone, a DEL): tried TRIES times.
      if (errnos[i] !== ESRCH || ++w.tries >= TRIES) waiting.delete(index);
    });
  } catch {
    for (const [index] of links) waiting.delete(index); // a refusal other than ESRCH: give up
  }
  timer = undefined;
  delay = Math.min(delay * 2, FIRST_MS << (TRIES - 1));
  schedule();
}
