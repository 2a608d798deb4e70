// Installs the SQL API: applies sql/ files in order, each in its own transaction, under an advisory lock.

import { errorCode, PgnetError } from "./errors.ts";
import type { Sql } from "./db.ts";
import { LATEST_VERSION, MIGRATIONS } from "./migrations.ts";
import { VERSION } from "./version.ts";

// pg_advisory_xact_lock key: hashtext('pgnet.install'), fixed so every pgnet version takes the same lock
const LOCK_KEY = 1_722_184_191;

export interface InstallResult {
  /** versions applied by this call (empty: already installed, possibly by a concurrent installer) */
  applied: number[];
  version: number;
}

/**
 * Installs or upgrades schema net. Idempotent and safe to run from several processes at once. `through` stops at
 * that version (upgrade tests start from an older schema that way).
 */
export async function install(sql: Sql, options: { through?: number } = {}): Promise<InstallResult> {
  const applied: number[] = [];
  for (const migration of MIGRATIONS.filter((m) => m.version <= (options.through ?? LATEST_VERSION))) {
    await ddl(sql, async (tx) => {
      await tx`select pg_advisory_xact_lock(${LOCK_KEY})`;
      const installed = await bootstrap(tx as unknown as Sql);
      if (installed >= migration.version) return;
      await tx.unsafe(migration.text);
      await tx`
        insert into net._pgnet_migrations (version, name, pgnet_version)
        values (${migration.version}, ${migration.name}, ${VERSION})
      `;
      applied.push(migration.version);
    });
  }
  return { applied, version: Math.min(options.through ?? LATEST_VERSION, LATEST_VERSION) };
}

/** The installed version: 0 when schema net is absent. */
export async function installedVersion(sql: Sql): Promise<number> {
  // two statements: a query naming a missing table fails at parse time, whatever branch would run
  const [exists] = await sql`select to_regclass('net._pgnet_migrations') is not null as yes`;
  if (!exists!.yes) return 0;
  const [row] = await sql`select coalesce(max(version), 0) as version from net._pgnet_migrations`;
  return Number(row!.version);
}

/**
 * Makes the queue, claim and response tables unlogged: pg_net's mode, faster to write, emptied by a crash and
 * not replicated. `ALTER TABLE net.http_request_queue SET LOGGED` and the same for net._http_claim and
 * net._http_response undo it.
 */
export async function setUnlogged(sql: Sql): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(${LOCK_KEY})`;
    await tx`alter table net.http_request_queue set unlogged`;
    await tx`alter table net._http_claim set unlogged`;
    await tx`alter table net._http_response set unlogged`;
  });
}

/** Switches to pgnet's privileges (each role its own rows) or pg_net's (every role every row): sql/0003. */
export async function setPrivileges(sql: Sql, mode: "pgnet" | "pg_net"): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(${LOCK_KEY})`;
    await tx`select net._set_privileges(${mode}::text)`;
  });
}

/** Removes schema net and everything in it (queued requests and stored responses too). */
export async function uninstall(sql: Sql): Promise<boolean> {
  return await ddl(sql, async (tx) => {
    await tx`select pg_advisory_xact_lock(${LOCK_KEY})`;
    const [row] = await tx`select to_regclass('net._pgnet_migrations') is not null as ours,
                                  to_regnamespace('net') is not null as present`;
    if (!row!.present) return false;
    if (!row!.ours) {
      throw new PgnetError(
        "NOT_PGNET_SCHEMA",
        'Schema "net" was not installed by pgnet (no net._pgnet_migrations); refusing to drop it',
      );
    }
    await tx`drop schema net cascade`;
    return true;
  });
}

/**
 * A transaction of DDL on tables a running worker uses: a deadlock with the worker's statements (which lock the
 * tables in another order) is retried, a few times, rather than failing the install.
 */
async function ddl<T>(sql: Sql, work: (tx: Sql) => Promise<T>): Promise<T> {
  for (let attempt = 0;; attempt++) {
    try {
      return await sql.begin((tx) => work(tx as unknown as Sql)) as T;
    } catch (error) {
      if (errorCode(error) !== "40P01" || attempt >= 4) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50 * (attempt + 1)));
    }
  }
}

/** Checks what is in the database, creates the bookkeeping table, returns the installed version. */
async function bootstrap(tx: Sql): Promise<number> {
  const [state] = await tx`
    select exists (select 1 from pg_extension where extname = 'pg_net') as pg_net,
           to_regnamespace('net') is not null as schema,
           to_regclass('net._pgnet_migrations') is not null as ours
  `;
  if (state!.pg_net) {
    throw new PgnetError(
      "PG_NET_INSTALLED",
      "The pg_net extension is installed in this database; pgnet provides the same schema net. " +
        "Drop it first (DROP EXTENSION pg_net), or point pgnet at another database",
    );
  }
  if (state!.schema && !state!.ours) {
    throw new PgnetError(
      "SCHEMA_IN_USE",
      'Schema "net" already exists and was not created by pgnet; rename or drop it, or use another database',
    );
  }
  if (!state!.ours) {
    await tx`create schema if not exists net`;
    await tx`
      create table net._pgnet_migrations (
        version int primary key,
        name text not null,
        pgnet_version text not null,
        installed_at timestamptz not null default now()
      )
    `;
    return 0;
  }
  const [row] = await tx`select coalesce(max(version), 0) as version from net._pgnet_migrations`;
  const version = Number(row!.version);
  if (version > LATEST_VERSION) {
    throw new PgnetError(
      "DATABASE_NEWER",
      `This database has pgnet's SQL API version ${version}, newer than this pgnet ${VERSION} knows ` +
        `(version ${LATEST_VERSION}); run a newer pgnet`,
    );
  }
  return version;
}
