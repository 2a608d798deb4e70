// Pure decisions about retrying: what a policy says, whether an outcome is retried, and when (full-jitter
// exponential backoff, or the server's Retry-After). The worker acts on them; nothing here touches I/O.

import { ERRORS } from "./libcurl.ts";
import type { ResponseRow } from "./queue.ts";

/** A request's retry policy: the jsonb of net.http_request(retry => …), or the worker's --retry-policy. */
export interface RetryPolicy {
  /** attempts in all, the first one included; 1 means no retries */
  maxAttempts: number;
  /** outcomes that are retried: "connection", "timeout", "4xx", "5xx", or a status code such as "429" */
  retryOn: readonly string[];
  /** the first retry waits up to this long; each later one up to twice as long as the one before */
  backoffMs: number;
  /** no retry waits longer than this (the cap of the exponential) */
  maxBackoffMs: number;
  /** a Retry-After longer than this is cut to it */
  maxRetryAfterMs: number;
}

/** What the worker does with an attempt's outcome. */
export type Decision =
  /** the final outcome: store the response row; `dead` when retries were allowed and all were used */
  | { action: "store"; dead: boolean; failure: string | null }
  /** try again after `delayMs`; `failure` says what went wrong this time */
  | { action: "retry"; delayMs: number; failure: string };

const DEFAULT_RETRY_ON: readonly string[] = ["connection", "timeout", "429", "5xx"];
const DEFAULTS = { maxAttempts: 5, backoffMs: 1000, maxBackoffMs: 600_000, maxRetryAfterMs: 3_600_000 };
/** the most attempts a policy may ask for */
const MAX_ATTEMPTS_LIMIT = 100;
const DAY_MS = 86_400_000;

/** Transport failures that may pass by themselves; a refused destination, a bad header or a size limit does not. */
const TRANSIENT_ERRORS: ReadonlySet<string> = new Set([
  ERRORS.resolve,
  ERRORS.connect,
  ERRORS.nothing,
  ERRORS.recv,
  ERRORS.partial,
  ERRORS.send,
  ERRORS.sslConnect,
]);

const OUTCOME = /^(connection|timeout|[1-5]xx|[1-5]\d\d)$/;

const FIELDS: Record<string, keyof RetryPolicy> = {
  max_attempts: "maxAttempts",
  retry_on: "retryOn",
  backoff_ms: "backoffMs",
  max_backoff_ms: "maxBackoffMs",
  max_retry_after_ms: "maxRetryAfterMs",
};

/**
 * Reads a policy from its JSON form ({"max_attempts": 5, "retry_on": ["5xx"], "backoff_ms": 1000, …}; missing
 * fields take their defaults) or "none". Throws a RangeError that says what is wrong. sql/0006 checks the same
 * rules in the caller's transaction; this check is for rows inserted directly and for the flag.
 */
export function parseRetryPolicy(value: unknown): RetryPolicy | null {
  if (value === null || value === "none") return null;
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new RangeError('expected "none" or a JSON object such as {"max_attempts": 5}');
  }
  const policy: RetryPolicy = { ...DEFAULTS, retryOn: DEFAULT_RETRY_ON };
  for (const [key, raw] of Object.entries(value as Record<string, unknown>)) {
    const field = FIELDS[key];
    if (!field) {
      throw new RangeError(`unknown retry policy field "${key}" (expected ${Object.keys(FIELDS).join(", ")})`);
    }
    if (field === "retryOn") {
      if (!Array.isArray(raw) || !raw.every((o) => typeof o === "string" && OUTCOME.test(o))) {
        throw new RangeError(
          'retry_on must be an array of "connection", "timeout", "4xx", "5xx" or status codes such as "429"',
        );
      }
      policy.retryOn = raw as string[];
      continue;
    }
    const [min, max] = field === "maxAttempts" ? [1, MAX_ATTEMPTS_LIMIT] : [0, 7 * DAY_MS];
    if (typeof raw !== "number" || !Number.isInteger(raw) || raw < min || raw > max) {
      throw new RangeError(`${key} must be an integer from ${min} to ${max}`);
    }
    policy[field] = raw;
  }
  return policy;
}

/** The flag's and setting's text: "none", an attempt count ("5": the defaults otherwise), or the JSON object. */
export function parseRetryPolicyText(text: string): RetryPolicy | null {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) return parseRetryPolicy({ max_attempts: Number(trimmed) });
  if (trimmed === "none") return null;
  let value: unknown;
  try {
    value = JSON.parse(trimmed);
  } catch {
    throw new RangeError('expected "none", a number of attempts, or a JSON object such as {"max_attempts": 5}');
  }
  return parseRetryPolicy(value);
}

/** The outcome names an attempt matches: ["timeout"], ["connection"], or ["503", "5xx"]; [] for the rest. */
function outcomes(row: ResponseRow): string[] {
  if (row.timed_out) return ["timeout"];
  if (row.status_code === null) {
    return row.error_msg !== null && TRANSIENT_ERRORS.has(row.error_msg) ? ["connection"] : [];
  }
  const code = String(row.status_code);
  return [code, `${code[0]}xx`];
}

/** What went wrong, in a line: the error text, or "HTTP 503". */
function describeOutcome(row: ResponseRow): string {
  return row.error_msg ?? `HTTP ${row.status_code}`;
}

/**
 * Decides after attempt `attempt` (1 for the first). `retryAfter` is the response's Retry-After header, if any.
 * An outcome the policy does not name is final, success or not (a 404 is not retried by default).
 */
export function decide(
  policy: RetryPolicy | null,
  attempt: number,
  row: ResponseRow,
  retryAfter: string | null,
  now = Date.now(),
  random = Math.random,
): Decision {
  if (!policy) return { action: "store", dead: false, failure: null };
  const names = outcomes(row);
  if (!names.some((name) => policy.retryOn.includes(name))) return { action: "store", dead: false, failure: null };
  const failure = describeOutcome(row);
  if (attempt >= policy.maxAttempts) return { action: "store", dead: policy.maxAttempts > 1, failure };
  const after = retryAfter === null ? null : retryAfterMs(retryAfter, now);
  const delayMs = after !== null ? Math.min(after, policy.maxRetryAfterMs) : backoffDelay(policy, attempt, random);
  return { action: "retry", delayMs, failure };
}

/** Full jitter: retry n (after attempt n) waits a uniform random time up to min(cap, backoff · 2^(n−1)). */
function backoffDelay(policy: RetryPolicy, attempt: number, random = Math.random): number {
  return Math.round(random() * maxDelay(policy, attempt));
}

/** The longest wait after attempt `attempt` (the README's schedule). */
export function maxDelay(policy: RetryPolicy, attempt: number): number {
  return Math.min(policy.maxBackoffMs, policy.backoffMs * 2 ** Math.min(attempt - 1, 40));
}

/** Retry-After (RFC 9110 §10.2.3) in ms from now: delay-seconds or an HTTP date; null when it is neither. */
export function retryAfterMs(value: string, now = Date.now()): number | null {
  const text = value.trim();
  if (/^\d+$/.test(text)) return Math.min(Number(text), DAY_MS / 1000 * 365) * 1000;
  // IMF-fixdate and the obsolete forms all name a weekday, a day, a month and a year
  if (!/^[A-Za-z]{3}/.test(text)) return null;
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}
