// Logging: readable lines or JSON lines on stderr, filtered by level. Never given headers or bodies.

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFormat = "text" | "json";
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];
export const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];

export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

export interface LoggerOptions {
  level: LogLevel;
  format: LogFormat;
  /** where lines go; stderr by default */
  write?: (line: string) => void;
}

function formatValue(value: unknown): string {
  if (value instanceof Error) return JSON.stringify(value.message);
  if (typeof value === "string") return /^[\w.:/@+-]+$/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value) ?? String(value);
}

export function createLogger(options: LoggerOptions): Logger {
  const write = options.write ?? ((line: string) => process.stderr.write(line + "\n"));
  const threshold = LOG_LEVELS.indexOf(options.level);
  const log = (level: LogLevel) => (message: string, fields: LogFields = {}) => {
    if (LOG_LEVELS.indexOf(level) < threshold) return;
    const time = new Date().toISOString();
    if (options.format === "json") {
      const plain = Object.fromEntries(
        Object.entries(fields).map(([k, v]) => [k, v instanceof Error ? v.message : v]),
      );
      write(JSON.stringify({ time, level, msg: message, ...plain }));
    } else {
      const extra = Object.entries(fields).map(([k, v]) => ` ${k}=${formatValue(v)}`).join("");
      write(`${time} ${level.toUpperCase().padEnd(5)} ${message}${extra}`);
    }
  };
  return { debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error") };
}

/** A logger that adds `fields` to every line (one database's worker says which database it serves). */
export function withFields(log: Logger, fields: LogFields): Logger {
  const add = (write: Logger["info"]) => (message: string, extra: LogFields = {}) =>
    write(message, { ...fields, ...extra });
  return { debug: add(log.debug), info: add(log.info), warn: add(log.warn), error: add(log.error) };
}
