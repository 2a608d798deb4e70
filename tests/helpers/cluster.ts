// One real PostgreSQL cluster per test run, one database per test file, cloned from a template that has
// the SQL API installed.

import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { connect, type Sql } from "../../src/db.ts";
import { EmbeddedPostgres, freePort } from "../../src/embedded.ts";
import { install } from "../../src/installer.ts";

const TEMPLATE = "pgnet_template";

interface Cluster {
  pg: EmbeddedPostgres;
  root: string;
  admin: Sql;
}

let started: Promise<Cluster> | undefined;
/** a second server, for tests of one pgnet serving databases on two servers */
let second: Promise<Cluster> | undefined;
/** a server that counts how often each statement is planned and run (pg_stat_statements), for tests/plans.test.ts */
let tracked: Promise<Cluster> | undefined;
const TRACKING = { shared_preload_libraries: "pg_stat_statements", "pg_stat_statements.track_planning": "on" };
let counter = 0;

async function startCluster(extra: Record<string, string> = {}): Promise<Cluster> {
  const root = mkdtempSync(join(tmpdir(), "pgnet-test-"));
  chmodSync(root, 0o755); // the server runs as another account when tests run as root
  const pg = new EmbeddedPostgres({
    dataDir: join(root, "data"),
    port: await freePort(),
    // tests value speed over durability against OS crashes; PostgreSQL crashes are still recovered from WAL
    settings: { fsync: "off", synchronous_commit: "off", full_page_writes: "off", max_connections: "300", ...extra },
  });
  pg.initialise();
  pg.start();
  const admin = connect({ url: pg.url() }, { max: 2 });
  try {
    await admin.unsafe(`create database ${TEMPLATE}`);
    const template = connect({ url: pg.url(TEMPLATE) }, { max: 1 });
    try {
      await install(template);
    } finally {
      await template.end();
    }
    // a template: pgnet --all-databases passes over it (and holds no session that would block copying it)
    await admin.unsafe(`alter database ${TEMPLATE} is_template true`);
  } catch (error) {
    // a schema that does not install (an SQL file in the making) must not leave a server running
    await admin.end({ timeout: 1 });
    pg.stop("immediate");
    rmSync(root, { recursive: true, force: true });
    throw error;
  }
  return { pg, root, admin };
}

export function cluster(): Promise<Cluster> {
  started ??= startCluster();
  return started;
}

export interface TestDatabase {
  name: string;
  url: string;
  /** a superuser connection to the database */
  sql: Sql;
  pg: EmbeddedPostgres;
  /** replaces `sql` with a new pool, e.g. after the server restarted under it */
  reconnect(): Promise<void>;
  drop(): Promise<void>;
}

/**
 * A fresh database with the SQL API installed; `server: "second"` puts it on another PostgreSQL server, `"tracked"`
 * on one with pg_stat_statements loaded (the extension is not created in the database).
 */
export async function createDatabase(
  options: { installed?: boolean; server?: "first" | "second" | "tracked" } = {},
): Promise<TestDatabase> {
  const owner = options.server === "second"
    ? await (second ??= startCluster())
    : options.server === "tracked"
    ? await (tracked ??= startCluster(TRACKING))
    : await cluster();
  const { pg, admin } = owner;
  const name = `test_${process.pid}_${++counter}`;
  await admin.unsafe(`create database ${name}${options.installed === false ? "" : ` template ${TEMPLATE}`}`);
  const url = pg.url(name);
  // tests pass JS arrays as parameters, which postgres.js serialises only with fetch_types (see connect())
  // the tests' own sessions are named apart from pgnet's ("pgnet <version>"), so tests can count only pgnet's
  const open = () => connect({ url }, { max: 4, fetch_types: true, connection: { application_name: "test suite" } });
  const db: TestDatabase = {
    name,
    url,
    sql: open(),
    pg,
    async reconnect() {
      await db.sql.end({ timeout: 1 }).catch(() => {});
      db.sql = open();
    },
    async drop() {
      await db.sql.end({ timeout: 1 });
      await admin.unsafe(`drop database if exists ${name} with (force)`);
    },
  };
  return db;
}

/** A raw postgres.js client, for tests that need options connect() sets differently. */
export function rawClient(url: string, options: postgres.Options<Record<string, never>> = {}) {
  return postgres(url, { onnotice: () => {}, ...options });
}

export async function stopCluster(): Promise<void> {
  for (const cluster of [started, second, tracked]) {
    const running = await cluster?.catch(() => null); // a cluster that failed to start stopped itself
    if (!running) continue;
    const { pg, root, admin } = running;
    await admin.end({ timeout: 1 });
    pg.stop("immediate");
    rmSync(root, { recursive: true, force: true });
  }
  started = undefined;
  second = undefined;
  tracked = undefined;
}
