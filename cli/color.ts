// Terminal colour for the CLI: verdicts, warnings and errors. Colour is on only when the stream
// is a terminal, NO_COLOR is unset and --no-color was not given; otherwise every helper returns
// its text unchanged, so piped output and tests see plain text. Must not decide anything else.

const CODES = { red: 31, green: 32, yellow: 33, cyan: 36, bold: 1, dim: 2 } as const;
type Style = keyof typeof CODES;

let enabled = false;

/** Decides once per run: --no-color, NO_COLOR (any value) and a non-terminal stdout turn it off. */
export function setupColor(opts: { noColor?: boolean | undefined }): void {
  let noColorEnv = false;
  let tty = false;
  try {
    noColorEnv = (Deno.env.get("NO_COLOR") ?? "") !== "";
    tty = Deno.stdout.isTerminal();
  } catch {
    // No env or tty permission: stay plain.
  }
  enabled = !opts.noColor && !noColorEnv && tty;
}

export function colorEnabled(): boolean {
  return enabled;
}

export function paint(style: Style, text: string): string {
  return enabled ? `\x1b[${CODES[style]}m${text}\x1b[0m` : text;
}

/** allowed → green, denied/FAIL → red, pass → green; anything else unchanged. */
export function paintVerdict(text: string): string {
  if (/^(allowed|pass|ALLOWED)$/.test(text)) return paint("green", text);
  if (/^(denied|FAIL|DENIED)$/.test(text)) return paint("red", text);
  return text;
}

/** "file:1:2: error: …" with the severity word coloured. */
export function severity(word: "error" | "warning"): string {
  return paint(word === "error" ? "red" : "yellow", word);
}
