// Progress for long CLI runs: one self-overwriting line on stderr ("lint: compiling 120/5000
// files"), only when stderr is a terminal, throttled, and erased when done, so piped output and
// logs never see it. Must not print anything else.

export class Progress {
  #on: boolean;
  #last = 0;
  #shown = false;
  #label: string;

  constructor(label: string) {
    this.#label = label;
    let tty = false;
    try {
      tty = Deno.stderr.isTerminal();
    } catch {
      // No tty information: stay quiet.
    }
    this.#on = tty;
  }

  /** Shows "label: what done/total"; at most five times a second. */
  update(what: string, done?: number, total?: number): void {
    if (!this.#on) return;
    const now = Date.now();
    if (now - this.#last < 200 && done !== undefined && done !== total) return;
    this.#last = now;
    const count = done !== undefined && total !== undefined ? ` ${done}/${total}` : "";
    this.#write(`\r\x1b[2K${this.#label}: ${what}${count}`);
    this.#shown = true;
  }

  done(): void {
    if (this.#shown) this.#write("\r\x1b[2K");
    this.#shown = false;
  }

  #write(text: string): void {
    Deno.stderr.writeSync(new TextEncoder().encode(text));
  }
}
