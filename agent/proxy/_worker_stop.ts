// Stopping a proxy Worker that blocks in epoll_wait (the DNS UDP Worker, the HTTP Worker): the
// main thread raises the shared STOP flag and writes the Worker's eventfd, the Worker closes its
// sockets and says "closed"; past the grace time it is terminated anyway.

/**
 * Asks the Worker to stop (`signal()`: set STOP, write the wake fd), waits until `closed` settles
 * or `ms` passed, then terminates it. True when the Worker said it closed in time.
 */
export async function stopWorker(
  worker: Worker,
  closed: Promise<void>,
  signal: () => void,
  ms = 2000,
): Promise<boolean> {
  signal();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const stopped = await Promise.race([
    closed.then(() => true),
    new Promise<boolean>((r) => timer = setTimeout(() => r(false), ms)),
  ]);
  clearTimeout(timer);
  worker.terminate();
  return stopped;
}
