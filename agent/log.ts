/**
 * The agent's structured log: one JSON object per line on stderr (`time`, `level`, `msg`, then
 * the logger's fields and the call's fields), filtered by level. Child loggers add fields such
 * as `subsys`. This module must not buffer: a line is written when it is logged.
 */

export const LOG_LEVELS = ["debug", "info", "warn", "error", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };

export type LogFields = Record<string, unknown>;

export interface LoggerOptions {
  level?: LogLevel;
  fields?: LogFields;
  /** Where lines go; stderr by default. Tests collect them. */
  write?: (line: string) => void;
}

const encoder = new TextEncoder();

function writeStderr(line: string): void {
  try {
    Deno.stderr.writeSync(encoder.encode(line + "\n"));
  } catch {
    // stderr closed: nothing better to do with a log line
  }
}

/** Errors as `{message, name}` (and their cause's message), everything else as JSON allows. */
function plain(v: unknown): unknown {
  if (v instanceof Error) {
    const out: LogFields = { name: v.name, message: v.message };
    if (v.cause instanceof Error) out.cause = v.cause.message;
    return out;
  }
  if (typeof v === "bigint") return String(v);
  return v;
}

export class Logger {
  readonly level: LogLevel;
  #fields: LogFields;
  #write: (line: string) => void;

  constructor(opts: LoggerOptions = {}) {
    this.level = opts.level ?? "info";
    this.#fields = opts.fields ?? {};
    this.#write = opts.write ?? writeStderr;
  }

  /** A logger that adds `fields` to every line. */
  child(fields: LogFields): Logger {
    return new Logger({
      level: this.level,
      fields: { ...this.#fields, ...fields },
      write: this.#write,
    });
  }

  enabled(level: LogLevel): boolean {
    return RANK[level] >= RANK[this.level] && level !== "silent";
  }

  debug(msg: string, fields?: LogFields): void {
    this.#log("debug", msg, fields);
  }

  info(msg: string, fields?: LogFields): void {
    this.#log("info", msg, fields);
  }

  warn(msg: string, fields?: LogFields): void {
    this.#log("warn", msg, fields);
  }

  error(msg: string, fields?: LogFields): void {
    this.#log("error", msg, fields);
  }

  #log(level: LogLevel, msg: string, fields: LogFields | undefined): void {
    if (!this.enabled(level)) return;
    const line: LogFields = { time: new Date().toISOString(), level, msg, ...this.#fields };
    for (const [k, v] of Object.entries(fields ?? {})) line[k] = plain(v);
    let text: string;
    try {
      text = JSON.stringify(line);
    } catch {
      text = JSON.stringify({ time: line.time, level, msg, note: "fields not serialisable" });
    }
    this.#write(text);
  }
}

/** A logger that drops everything (tests that do not look at logs). */
export const SILENT = new Logger({ level: "silent" });
