// Inside a proxy Worker that blocks in epoll_wait (the DNS UDP Worker, the HTTP Worker): letting
// the main thread's messages run between rounds of the loop.

/** Lets pending messages from the main thread run (a message event, not a clamped timer). */
export function yieldToMessages(): Promise<void> {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => {
      ch.port1.close();
      resolve();
    };
    ch.port2.postMessage(0);
  });
}
