// Database connections: where to connect (flag, DATABASE_URL, libpq variables) and how (postgres.js options).

import postgres from "postgres";
import { DATABASE_SETTINGS } from "./config.ts";
import { APPLICATION_NAME } from "./version.ts";

export type Sql = postgres.Sql<Record<string, never>>;

/** A database to connect to: a postgres:// URL, or a database name with the rest from PG* variables. */
export interface Target {
  url?: string;
  database?: string;
}

/**
 * `--database` (a name or a URL), else DATABASE_URL, else PGDATABASE/PGHOST with the other libpq variables.
 * Returns undefined when nothing names a database: the caller may start an embedded PostgreSQL.
 */
export function resolveTarget(arg: string | undefined, env: Record<string, string | undefined>): Target | undefined {
  const value = arg ?? (env.DATABASE_URL || undefined);
  if (value !== undefined) return /^postgres(ql)?:\/\//i.test(value) ? { url: value } : { database: value };
  if (env.PGDATABASE || env.PGHOST) return {};
  return undefined;
}

export type ConnectOptions = Omit<postgres.Options<Record<string, never>>, "database">;

/**
 * A postgres.js client for pgnet. `fetch_types: false`: postgres.js otherwise runs an array-types query on every
 * new connection and drops its promise, so when that query fails (the connection is terminated, PostgreSQL
 * restarts, a statement_timeout cancels it) the rejection is unhandled and the runtime exits
 * (porsager/postgres#1192, #1205, #1223, open in 3.4.9). Without it, JS arrays are not serialised as parameters:
 * pass lists as text, e.g. string_to_array(${ids.join(",")}, ',')::bigint[].
 */
export function connect(target: Target, options: ConnectOptions = {}): Sql {
  const merged = {
    onnotice: () => {},
    fetch_types: false,
    ...options,
    connection: { application_name: APPLICATION_NAME, ...options.connection },
  };
  return (target.url
    ? postgres(target.url, merged)
    : postgres({ ...merged, ...(target.database ? { database: target.database } : {}) })) as unknown as Sql;
}

/** host:port/database of a client, without credentials, for logs. */
export function describe(sql: Sql): string {
  const o = sql.options as unknown as { host: string[]; port: number[]; database: string; path?: string };
  return `${o.path || `${o.host.join(",")}:${o.port.join(",")}`}/${o.database}`;
}

/**
 * Reads the pg_net.* settings as this session sees them (ALTER SYSTEM, ALTER DATABASE and ALTER ROLE ... SET
 * included). A TTL in any PostgreSQL interval syntax is turned into seconds here; one that PostgreSQL cannot
 * read is returned as given, for the caller to report.
 */
export async function readDatabaseSettings(sql: Sql): Promise<Record<string, string | null>> {
  const values: Record<string, string | null> = {};
  for (const name of DATABASE_SETTINGS) {
    const [row] = await sql`select current_setting(${name}, true) as value`;
    values[name] = (row?.value as string | null) ?? null;
  }
  const ttl = values["pg_net.ttl"];
  if (ttl && !/^\s*\d+(\.\d+)?\s*[a-z]*\s*$/i.test(ttl)) {
    try {
      const [row] = await sql`select extract(epoch from ${ttl}::interval)::float8 as seconds`;
      values["pg_net.ttl"] = `${row!.seconds}s`;
    } catch {
      // not an interval: left as is, resolveSettings reports it and uses the default
    }
  }
  return values;
}
