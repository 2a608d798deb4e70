// Installing schema net: idempotent, safe under concurrency, versioned, refusing what it should not touch.

import { afterAll, beforeAll, expect, test } from "bun:test";
import { connect } from "../src/db.ts";
import { install, installedVersion, setUnlogged, uninstall } from "../src/installer.ts";
import { LATEST_VERSION, MIGRATIONS } from "../src/migrations.ts";
import { VERSION } from "../src/version.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { fakePgNet } from "./helpers/extension.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createDatabase({ installed: false });
});
afterAll(async () => {
  await db.drop();
});

test("installing twice applies the SQL once and records the version", async () => {
  expect(await installedVersion(db.sql)).toBe(0);
  const all = MIGRATIONS.map((m) => m.version);
  expect(await install(db.sql)).toEqual({ applied: all, version: LATEST_VERSION });
  expect(await install(db.sql)).toEqual({ applied: [], version: LATEST_VERSION });
  const rows = await db.sql`select version, name, pgnet_version from net._pgnet_migrations`;
  expect(rows.map((r) => ({ ...r }))).toEqual(
    MIGRATIONS.map((m) => ({ version: m.version, name: m.name, pgnet_version: VERSION })),
  );
  await uninstall(db.sql);
});

test("a role created before the install can enqueue and read responses", async () => {
  await db.sql`create role pgnet_existing_role login`;
  try {
    await install(db.sql);
    const status = await db.sql.begin(async (tx) => {
      await tx`set local role pgnet_existing_role`;
      const [{ id }] = await tx`select net.http_get('http://localhost/') as id` as unknown as [{ id: string }];
      await tx`select * from net._http_response`;
      return (await tx`select status from net._http_collect_response(${id})`)[0]!.status;
    });
    expect(status).toBe("PENDING");
  } finally {
    await uninstall(db.sql);
    await db.sql`drop role pgnet_existing_role`;
  }
});

test("two processes installing at once both succeed and the SQL runs once", async () => {
  const clients = [
    connect({ url: db.url }, { max: 1 }),
    connect({ url: db.url }, { max: 1 }),
    connect({ url: db.url }, { max: 1 }),
  ];
  try {
    const results = await Promise.all(clients.map((c) => install(c)));
    // each file is applied once, by whichever process took the lock first
    const applied = results.flatMap((r) => r.applied).sort((a, b) => a - b);
    expect(applied).toEqual(MIGRATIONS.map((m) => m.version));
    const [row] = await db.sql`select count(*)::int as n from net._pgnet_migrations`;
    expect(row!.n).toBe(MIGRATIONS.length);
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
});

test("a database installed by a newer pgnet is refused with what to do", async () => {
  await db.sql`insert into net._pgnet_migrations (version, name, pgnet_version) values (999, 'future', '9.9.9')`;
  try {
    await expect(install(db.sql)).rejects.toMatchObject({
      code: "DATABASE_NEWER",
      message: expect.stringContaining("SQL API version 999, newer than this pgnet"),
    });
  } finally {
    await db.sql`delete from net._pgnet_migrations where version = 999`;
  }
});

test("uninstall removes schema net; a second uninstall has nothing to do", async () => {
  expect(await uninstall(db.sql)).toBe(true);
  const [row] = await db.sql`select to_regnamespace('net') is null as gone`;
  expect(row!.gone).toBe(true);
  expect(await uninstall(db.sql)).toBe(false);
});

test("a schema net that pgnet did not create is neither installed over nor dropped", async () => {
  await db.sql`create schema net`;
  await db.sql`create table net.something_else (x int)`;
  try {
    await expect(install(db.sql)).rejects.toMatchObject({ code: "SCHEMA_IN_USE" });
    await expect(uninstall(db.sql)).rejects.toMatchObject({ code: "NOT_PGNET_SCHEMA" });
    const [row] = await db.sql`select to_regclass('net.something_else') is not null as kept`;
    expect(row!.kept).toBe(true);
  } finally {
    await db.sql`drop schema net cascade`;
  }
});

test("--unlogged makes the queue, claim and response tables unlogged", async () => {
  await install(db.sql);
  const persistence = async () =>
    (await db.sql`
    select relname, relpersistence from pg_class
     where relname in ('http_request_queue', '_http_claim', '_http_response') and relnamespace = 'net'::regnamespace order by relname
  `).map((r) => `${r.relname}:${r.relpersistence}`);
  expect(await persistence()).toEqual(["_http_claim:p", "_http_response:p", "http_request_queue:p"]);
  await setUnlogged(db.sql);
  expect(await persistence()).toEqual(["_http_claim:u", "_http_response:u", "http_request_queue:u"]);
  await uninstall(db.sql);
});

// A real extension named pg_net whose script only creates schema net, as pg_net's does (tests/helpers/extension.ts).
test("a database where the pg_net extension is installed is refused until the extension is dropped", async () => {
  const extension = await fakePgNet(db.sql, "create schema net;\n");
  try {
    await extension.create(db.sql);
    try {
      await expect(install(db.sql)).rejects.toMatchObject({
        code: "PG_NET_INSTALLED",
        message: expect.stringContaining("The pg_net extension is installed in this database"),
      });
      const [left] = await db.sql`select to_regclass('net._pgnet_migrations') is null as untouched`;
      expect(left!.untouched).toBe(true);
    } finally {
      await db.sql`drop extension if exists pg_net`;
    }
    expect(await install(db.sql)).toEqual({ applied: MIGRATIONS.map((m) => m.version), version: LATEST_VERSION });
    await uninstall(db.sql);
  } finally {
    extension.remove();
  }
});
