/**
 * Logging set-up: LogTape, one line per record on stderr, as text or as JSON
 * lines. Every line a connection writes carries its session id.
 *
 * @module
 */

import {
  configure,
  getJsonLinesFormatter,
  getLogger,
  type Logger,
  type LogLevel,
  type LogRecord,
  type TextFormatter,
} from "@logtape/logtape";

/** Log formats an operator can pick. */
export const LOG_FORMATS = ["text", "json"] as const;
/** One of {@link LOG_FORMATS}. */
export type LogFormat = typeof LOG_FORMATS[number];
/** Log levels an operator can pick, least to most severe. */
export const LOG_LEVELS = ["trace", "debug", "info", "warning", "error", "fatal"] as const;

const encoder = new TextEncoder();

/** Renders a record as `time LEVEL [session] message`. */
export function formatTextLine(record: LogRecord): string {
  let message = "";
  for (let i = 0; i < record.message.length; i++) {
    const part = record.message[i];
    message += i % 2 === 0 ? String(part) : renderValue(part);
  }
  const session = record.properties.session;
  const tag = typeof session === "string" ? ` [${session}]` : "";
  const time = new Date(record.timestamp).toISOString();
  return `${time} ${record.level.toUpperCase().padEnd(7)}${tag} ${message}\n`;
}

// Strings with spaces, quotes or control characters are JSON-quoted, so that a
// client-chosen value can never forge a log line or a terminal escape.
function renderValue(value: unknown): string {
  if (typeof value === "string") {
    // deno-lint-ignore no-control-regex
    return /[\s"\\\x00-\x1f\x7f]|^$/.test(value) ? JSON.stringify(value) : value;
  }
  if (value === undefined) return "-";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

/** Sets up LogTape for the whole process; call once, before anything logs. */
export async function configureLogging(level: LogLevel, format: LogFormat): Promise<void> {
  const formatter: TextFormatter = format === "json" ? getJsonLinesFormatter() : formatTextLine;
  await configure({
    sinks: {
      // Synchronous writes: a line logged just before a crash is not lost in a buffer.
      stderr: (record: LogRecord) => {
        const bytes = encoder.encode(formatter(record));
        let offset = 0;
        while (offset < bytes.length) offset += Deno.stderr.writeSync(bytes.subarray(offset));
      },
    },
    loggers: [
      { category: ["letterbox"], lowestLevel: level, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}

/**
 * A message template parsed once, for the lines logged per message and per
 * connection: LogTape parses a template string again on every call and wraps
 * the record in getters and copies, which measured about a tenth of the CPU
 * spent on a 1 KiB message (see {@link logLine}). Placeholders are plain
 * property names, `{id}`.
 */
export class LogTemplate {
  /** The template as written, LogTape's `rawMessage`. */
  readonly raw: string;
  readonly #texts: string[] = [];
  readonly #names: string[] = [];

  constructor(raw: string) {
    this.raw = raw;
    const parts = raw.split(/\{([A-Za-z_][A-Za-z0-9_]*)\}/);
    for (let i = 0; i < parts.length; i++) (i % 2 === 0 ? this.#texts : this.#names).push(parts[i]);
  }

  /** LogTape's message array: text, value, text, ..., text. */
  message(properties: Readonly<Record<string, unknown>>): unknown[] {
    const message: unknown[] = [this.#texts[0]];
    for (let i = 0; i < this.#names.length; i++) {
      message.push(properties[this.#names[i]], this.#texts[i + 1]);
    }
    return message;
  }
}

/** Logs `properties` through `template` as `log.info(template.raw, properties)` would. */
export function logLine(
  log: Logger,
  level: LogLevel,
  template: LogTemplate,
  properties: Record<string, unknown>,
): void {
  if (!log.isEnabledFor(level)) return;
  const record: LogRecord = {
    category: log.category,
    level,
    timestamp: Date.now(),
    message: template.message(properties),
    rawMessage: template.raw,
    properties,
  };
  log.emit(record);
}

/** An error as one line of text for a log line or a message to the operator. */
export function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * The logger for one part of Letterbox, e.g. `logger("smtp")`. `root` names
 * the instance: tests that run several servers in one process give each its own.
 */
export function logger(name: string, root: readonly string[] = ["letterbox"]): Logger {
  return getLogger([...root, name]);
}
