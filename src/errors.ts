// Errors: one coercion for anything thrown, and startup/configuration errors with stable codes.

/** A startup or configuration error: `code` is stable for scripts, `message` says what to do. */
export class PgnetError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "PgnetError";
    this.code = code;
  }
}

/** Turns any thrown value into an Error (a string, an object, undefined…). */
export function coerceError(value: unknown): Error {
  if (value instanceof Error) return value;
  if (typeof value === "string") return new Error(value);
  try {
    return new Error(`Non-error thrown: ${JSON.stringify(value)}`);
  } catch {
    return new Error(`Non-error thrown: ${String(value)}`);
  }
}

/** The error's code when it has one (postgres.js sets SQLSTATE in `code`, Node/Bun set e.g. ECONNREFUSED). */
export function errorCode(value: unknown): string | undefined {
  const code = (value as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}
