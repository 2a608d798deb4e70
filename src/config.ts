// Settings: what each one means, how it is parsed, and where it comes from
// (flag > environment variable > database setting pg_net.* > default).

import { PgnetError } from "./errors.ts";
import { type HostRule, parseHostRules } from "./limits.ts";
import { parseRetryPolicyText, type RetryPolicy } from "./retry.ts";

export interface WorkerSettings {
  /** rows claimed per query (pg_net.batch_size); also the TTL deletion batch */
  batchSize: number;
  /** responses older than this are deleted (pg_net.ttl) */
  ttlSeconds: number;
  /** requests in flight at once, across all targets */
  concurrency: number;
  /** backstop poll for work when no NOTIFY arrives */
  pollIntervalMs: number;
  /** a claimed request belongs to this worker for this long; renewed while in flight */
  leaseMs: number;
  /** on shutdown, how long in-flight requests may still run */
  shutdownTimeoutMs: number;
  /** response bodies over this many bytes become an error row */
  maxResponseBytes: number;
  /** a queued request (URL, headers and body) over this many bytes becomes an error row, unread */
  maxRequestBytes: number;
  /** bytes of bodies held at once: in flight, and waiting to be stored */
  memoryBudgetBytes: number;
  /** response data per write statement; a larger response is written alone */
  maxWriteBytes: number;
  /** while other requests run, a result waits up to this long for theirs to share its write */
  writeDelayMs: number;
  /** a request claimed this many times without a stored result is not sent again */
  maxAttempts: number;
  /** lock_timeout of pgnet's statements */
  lockTimeoutMs: number;
  /** statement_timeout of pgnet's statements */
  statementTimeoutMs: number;
  /** the retry policy of requests that have none of their own; null: each is sent once, as by pg_net */
  retryPolicy: RetryPolicy | null;
  /** requests that used up their retries are kept this long for net.retry() */
  deadLetterTtlSeconds: number;
  /** requests in flight to one host at most (unless a --host-limits rule says otherwise) */
  hostConcurrency: number;
  /** per-host-pattern concurrency and rate limits */
  hostRules: HostRule[];
  /** the role pgnet's statements run as (SET ROLE): pgnet_worker, or pg_net.username */
  role: string;
}

export type SettingKey = keyof WorkerSettings;
/** command-line names, also the keys of SettingValues */
export type SettingFlag =
  | "batch-size"
  | "ttl"
  | "concurrency"
  | "poll-interval"
  | "lease"
  | "shutdown-timeout"
  | "max-response-size"
  | "max-request-size"
  | "memory-budget"
  | "max-write-size"
  | "write-delay"
  | "max-attempts"
  | "lock-timeout"
  | "statement-timeout"
  | "retry-policy"
  | "dead-letter-ttl"
  | "host-concurrency"
  | "host-limits"
  | "role";
export type Source = "flag" | "env" | "database" | "default";

interface Spec<K extends SettingKey = SettingKey> {
  key: K;
  flag: SettingFlag;
  env: string;
  /** the pg_net.* setting read with current_setting(name, true), if any */
  database?: string;
  default: string;
  help: string;
  parse(text: string): WorkerSettings[K];
}

/** A setting's spec, typed by its key (so SETTINGS can hold settings of every type). */
function spec<K extends SettingKey>(s: Spec<K>): Spec {
  return s as unknown as Spec;
}

const MAX_INT = 2_147_483_647;

function integer(min: number, max: number) {
  return (text: string): number => {
    const value = /^\s*-?\d+\s*$/.test(text) ? Number(text) : NaN;
    if (!Number.isSafeInteger(value) || value < min || value > max) {
      throw new RangeError(`expected an integer from ${min} to ${max}`);
    }
    return value;
  };
}

const UNITS: Record<string, number> = {
  ms: 1,
  msec: 1,
  msecs: 1,
  millisecond: 1,
  milliseconds: 1,
  s: 1000,
  sec: 1000,
  secs: 1000,
  second: 1000,
  seconds: 1000,
  m: 60_000,
  min: 60_000,
  mins: 60_000,
  minute: 60_000,
  minutes: 60_000,
  h: 3_600_000,
  hr: 3_600_000,
  hrs: 3_600_000,
  hour: 3_600_000,
  hours: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
  days: 86_400_000,
  w: 604_800_000,
  week: 604_800_000,
  weeks: 604_800_000,
};

/**
 * Parses "500ms", "5s", "6 hours", "1h 30min" into milliseconds. A bare number is in `bareUnit`
 * (seconds for the TTL, as PostgreSQL reads '3600'::interval; milliseconds elsewhere).
 */
export function parseDuration(text: string, bareUnit: "ms" | "s"): number {
  const trimmed = text.trim().toLowerCase();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed) * (bareUnit === "s" ? 1000 : 1);
  const part = /(\d+(?:\.\d+)?)\s*([a-z]+)\s*/gy;
  let total = 0;
  let matched = 0;
  for (let m = part.exec(trimmed); m; m = part.exec(trimmed)) {
    const unit = UNITS[m[2]!];
    if (unit === undefined) break;
    total += Number(m[1]) * unit;
    matched = part.lastIndex;
  }
  if (trimmed === "" || matched !== trimmed.length) {
    throw new RangeError('expected a duration such as "500ms", "30s", "5 minutes" or "6 hours"');
  }
  return total;
}

function duration(bareUnit: "ms" | "s", minMs: number, maxMs: number, divisor: number) {
  return (text: string): number => {
    const ms = parseDuration(text, bareUnit);
    if (ms < minMs || ms > maxMs) {
      throw new RangeError(`expected a duration from ${minMs} ms to ${maxMs} ms`);
    }
    return ms / divisor;
  };
}

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  kib: 1024,
  mb: 1e6,
  mib: 1048576,
  gb: 1e9,
  gib: 1073741824,
};

/** Parses "64MiB", "500kb", "1GB" or a bare number of bytes. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$/i.exec(text);
  const value = m ? Number(m[1]) * SIZE_UNITS[(m[2] ?? "b").toLowerCase()]! : NaN;
  if (!Number.isSafeInteger(value)) throw new RangeError('expected a size such as "64MiB"');
  return value;
}

function bytes(min: number, max: number, range: string) {
  return (text: string): number => {
    let value = NaN;
    try {
      value = parseSize(text);
    } catch { /* reported with the range below */ }
    if (!(value >= min && value <= max)) throw new RangeError(`expected a size from ${range}, such as "64MiB"`);
    return value;
  };
}

/**
 * A count ("512") or a share of --concurrency ("25%"), kept as a negative percentage until resolveSettings knows
 * the concurrency it is a share of.
 */
function share(text: string): number {
  const percent = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(text);
  if (!percent) return integer(1, 65535)(text);
  const value = Number(percent[1]);
  if (!(value > 0 && value <= 100)) throw new RangeError("expected a share from 1% to 100%");
  return -value;
}

const MiB = 1_048_576;
// a stored body is a PostgreSQL text value, which holds at most 1 GB
const bodySize = bytes(1, 1_000_000_000, "1 byte to 1GB");

// Defaults measured with `npm run bench` on 2 cores (median of 3, durable tables), see README "Performance":
// - concurrency 2048: 1,000 requests to a 2 s endpoint and 1,000 fast ones committed together, slow first:
//   the last fast one is stored after 154 ms; with 256 in flight, after 6,210 ms (slow ones go in rounds).
//   Memory stays low: draining 1,000,000 queued requests peaked at 123 MB RSS.
// - batch-size 200 (pg_net's default): 1,000 did not help head-of-line (167 ms) and claims are not the
//   bottleneck of throughput (11,900 req/s for 100,000 GETs, against the target's own 24,800 req/s).
export const SETTINGS: readonly Spec[] = [
  {
    key: "batchSize",
    flag: "batch-size",
    env: "PGNET_BATCH_SIZE",
    database: "pg_net.batch_size",
    default: "200",
    help: "rows claimed per query, and responses deleted per TTL pass",
    parse: integer(1, 32767),
  },
  {
    key: "ttlSeconds",
    flag: "ttl",
    env: "PGNET_TTL",
    database: "pg_net.ttl",
    default: "6 hours",
    help: "how long responses are kept",
    parse: duration("s", 1000, 100 * 365 * 86_400_000, 1000),
  },
  {
    key: "concurrency",
    flag: "concurrency",
    env: "PGNET_CONCURRENCY",
    default: "2048",
    help: "requests in flight at once",
    parse: integer(1, 65535),
  },
  {
    key: "pollIntervalMs",
    flag: "poll-interval",
    env: "PGNET_POLL_INTERVAL",
    default: "5s",
    help: "backstop poll when no notification arrives",
    parse: duration("ms", 10, 86_400_000, 1),
  },
  {
    key: "leaseMs",
    flag: "lease",
    env: "PGNET_LEASE",
    default: "60s",
    help: "how long a claimed request stays with this worker without renewal",
    parse: duration("ms", 1000, 86_400_000, 1),
  },
  {
    key: "shutdownTimeoutMs",
    flag: "shutdown-timeout",
    env: "PGNET_SHUTDOWN_TIMEOUT",
    default: "30s",
    help: "on shutdown, how long in-flight requests may finish",
    parse: duration("ms", 0, MAX_INT, 1),
  },
  {
    key: "maxResponseBytes",
    flag: "max-response-size",
    env: "PGNET_MAX_RESPONSE_SIZE",
    default: "64MiB",
    help: "larger response bodies are stored as an error",
    parse: bodySize,
  },
  {
    key: "maxRequestBytes",
    flag: "max-request-size",
    env: "PGNET_MAX_REQUEST_SIZE",
    default: "64MiB",
    help: "queued requests larger than this (URL, headers and body) are stored as an error, unread",
    parse: bodySize,
  },
  {
    key: "memoryBudgetBytes",
    flag: "memory-budget",
    env: "PGNET_MEMORY_BUDGET",
    default: "256MiB",
    help: "bodies held at once, in flight and waiting to be stored; at the limit, new requests wait",
    parse: bytes(16 * MiB, 1024 * 1024 * MiB, "16MiB to 1TiB"),
  },
  {
    key: "maxWriteBytes",
    flag: "max-write-size",
    env: "PGNET_MAX_WRITE_SIZE",
    default: "4MiB",
    help: "response data per write statement; a larger response is written alone",
    parse: bytes(64 * 1024, 256 * MiB, "64KiB to 256MiB"),
  },
  // write-delay 10ms: 100 requests committed together, their answers spread over 50 ms, cost pgnet 38 to 51
  // statements with 0 and 6 with 10ms, stored as fast (61 against 59-63 ms to the last); one request at a time
  // waits for nothing, and 100,000 GETs drain as fast (11,965 against 11,321 req/s, one run each)
  {
    key: "writeDelayMs",
    flag: "write-delay",
    env: "PGNET_WRITE_DELAY",
    default: "10ms",
    help: "while other requests run, how long a result may wait for theirs to share its write (0: never waits)",
    parse: duration("ms", 0, 1000, 1),
  },
  {
    key: "maxAttempts",
    flag: "max-attempts",
    env: "PGNET_MAX_ATTEMPTS",
    default: "5",
    help: "a request claimed this often without a result (its worker died each time) is stored as an error",
    parse: integer(1, 1000),
  },
  {
    key: "lockTimeoutMs",
    flag: "lock-timeout",
    env: "PGNET_LOCK_TIMEOUT",
    default: "5s",
    help: "how long pgnet's statements wait for a lock another session holds (then retried, /health says why)",
    parse: duration("ms", 10, 86_400_000, 1),
  },
  {
    key: "statementTimeoutMs",
    flag: "statement-timeout",
    env: "PGNET_STATEMENT_TIMEOUT",
    default: "60s",
    help: "longest a statement of pgnet's may run (then retried, /health says why)",
    parse: duration("ms", 100, 86_400_000, 1),
  },
  spec({
    key: "retryPolicy",
    flag: "retry-policy",
    env: "PGNET_RETRY_POLICY",
    database: "pg_net.retry_policy",
    default: "none",
    help:
      'retries of requests without a policy of their own: none, a number of attempts, or JSON {"max_attempts": 5, …}',
    parse: parseRetryPolicyText,
  }),
  {
    key: "deadLetterTtlSeconds",
    flag: "dead-letter-ttl",
    env: "PGNET_DEAD_LETTER_TTL",
    database: "pg_net.dead_letter_ttl",
    default: "7 days",
    help: "how long requests that used up their retries are kept for net.retry()",
    parse: duration("s", 1000, 100 * 365 * 86_400_000, 1000),
  },
  {
    key: "hostConcurrency",
    flag: "host-concurrency",
    env: "PGNET_HOST_CONCURRENCY",
    database: "pg_net.host_concurrency",
    default: "25%",
    help: "requests in flight to one host at most: a number, or a share of --concurrency",
    parse: share,
  },
  spec({
    key: "hostRules",
    flag: "host-limits",
    env: "PGNET_HOST_LIMITS",
    database: "pg_net.host_limits",
    default: "",
    help:
      'per-host limits, the first matching rule applies: "api.example.com=concurrency:4,rate:20; *.example.org=rate:1"',
    parse: parseHostRules,
  }),
  {
    key: "role",
    flag: "role",
    env: "PGNET_ROLE",
    database: "pg_net.username",
    default: "pgnet_worker",
    help: "the role pgnet's statements run as (SET ROLE): a member of pgnet_worker, not a superuser",
    parse: roleName,
  },
];

/** A role name as PostgreSQL takes it: 1 to 63 bytes, no NUL. */
function roleName(text: string): string {
  const name = text.trim();
  if (name === "" || new TextEncoder().encode(name).length > 63 || name.includes("\0")) {
    throw new RangeError("expected a role name of 1 to 63 bytes");
  }
  return name;
}

/** raw values keyed by flag name, e.g. { "batch-size": "500", ttl: "1 hour" } */
export type SettingValues = Partial<Record<SettingFlag, string>>;

export interface ResolvedSettings {
  settings: WorkerSettings;
  sources: Record<SettingKey, Source>;
}

export interface SettingsInput {
  /** values given as flags */
  flags?: SettingValues;
  /** the process environment */
  env?: Record<string, string | undefined>;
  /** raw pg_net.* values read from the database (NULL and '' mean unset) */
  database?: Record<string, string | null | undefined>;
  /** told about a database value that does not parse; the default is used instead */
  onInvalidDatabaseValue?: (name: string, value: string, reason: string, fallback: string) => void;
}

/**
 * Applies the precedence. A bad flag or environment value throws (the operator typed it: refuse to start);
 * a bad database value is reported and replaced by the default (a worker must never crash-loop on it).
 */
export function resolveSettings(input: SettingsInput): ResolvedSettings {
  const settings = {} as WorkerSettings;
  const sources = {} as Record<SettingKey, Source>;
  for (const spec of SETTINGS) {
    const flag = input.flags?.[spec.flag];
    const env = input.env?.[spec.env];
    const db = spec.database ? input.database?.[spec.database] : undefined;
    let value: WorkerSettings[SettingKey] | undefined;
    if (flag !== undefined) {
      value = parseOrThrow(spec, flag, `--${spec.flag}`);
      sources[spec.key] = "flag";
    } else if (env !== undefined && env !== "") {
      value = parseOrThrow(spec, env, spec.env);
      sources[spec.key] = "env";
    } else if (db !== undefined && db !== null && db.trim() !== "") {
      try {
        value = spec.parse(db);
        sources[spec.key] = "database";
      } catch (error) {
        input.onInvalidDatabaseValue?.(spec.database!, db, (error as Error).message, spec.default);
      }
    }
    if (value === undefined) {
      value = spec.parse(spec.default);
      sources[spec.key] = "default";
    }
    (settings as unknown as Record<SettingKey, unknown>)[spec.key] = value;
  }
  if (settings.hostConcurrency < 0) {
    settings.hostConcurrency = Math.max(1, Math.floor(settings.concurrency * -settings.hostConcurrency / 100));
  }
  checkMemoryBudget(settings, sources);
  return { settings, sources };
}

/**
 * The budget must hold the largest request and the largest response at once (a response body counts twice: as
 * bytes while it arrives, then as text until it is stored), or a request at both limits could never run.
 */
function checkMemoryBudget(settings: WorkerSettings, sources: Record<SettingKey, Source>): void {
  const needed = 2 * settings.maxResponseBytes + settings.maxRequestBytes;
  if (settings.memoryBudgetBytes >= needed) return;
  const name = (key: SettingKey) => {
    const spec = SETTINGS.find((s) => s.key === key)!;
    return sources[key] === "env" ? spec.env : `--${spec.flag}`;
  };
  throw new PgnetError(
    "INVALID_SETTING",
    `Invalid ${name("memoryBudgetBytes")}: expected at least ${needed} bytes (twice ${name("maxResponseBytes")} ` +
      `plus ${name("maxRequestBytes")}), got ${settings.memoryBudgetBytes}`,
  );
}

function parseOrThrow(spec: Spec, text: string, name: string): WorkerSettings[SettingKey] {
  try {
    return spec.parse(text);
  } catch (error) {
    throw new PgnetError(
      "INVALID_SETTING",
      `Invalid ${name}: ${(error as Error).message}, got ${JSON.stringify(text)}`,
    );
  }
}

/** The pg_net.* names read from the database. */
export const DATABASE_SETTINGS = SETTINGS.flatMap((s) => (s.database ? [s.database] : []));
