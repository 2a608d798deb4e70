// One pgnet for many databases: databases on two servers served by one process, a database dropped while it runs,
// --all-databases noticing schema net come and go, fairness between a backlog and a trickle in another database,
// and pg_net.database_name and pg_net.username honoured.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Fleet } from "../src/fleet.ts";
import { install } from "../src/installer.ts";
import { inProcess, PgnetProcess } from "./helpers/binary.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture } from "./helpers/fixture.ts";
import { forgetRequests, memoryLogger, responseFor, startWorker, unanswered, waitFor } from "./helpers/worker.ts";

let a: TestDatabase;
let b: TestDatabase;
let c: TestDatabase; // on another server
let fixture: Fixture;

beforeAll(async () => {
  [a, b, c] = await Promise.all([createDatabase(), createDatabase(), createDatabase({ server: "second" })]);
  fixture = await Fixture.start();
});
afterAll(async () => {
  await Promise.all([a.drop(), b.drop(), c.drop()]);
  await fixture.stop();
});

async function enqueue(db: TestDatabase, count: number, path = "/echo"): Promise<string[]> {
  const rows = await db.sql`
    select net.http_get(${fixture.url(path)} || '?db=' || ${db.name} || '&n=' || n) as id
      from generate_series(1, ${count}) n
  `;
  return rows.map((r) => String(r.id));
}

const answered = async (db: TestDatabase) =>
  (await db.sql`select count(*)::int as n from net._http_response`)[0]!.n as number;
const receivedFor = (db: TestDatabase) => fixture.requests.filter((r) => r.query.get("db") === db.name);

async function json(url: string): Promise<Record<string, unknown>> {
  return await (await fetch(url)).json() as Record<string, unknown>;
}

describe("one process, several databases", () => {
  test("three databases on two servers: each request answered once, counted per database", async () => {
    const pgnet = new PgnetProcess([
      ...["--database", a.url, "--database", b.url, "--database", c.url],
      ...["--status-port", "0", "--poll-interval", "200ms"],
    ]);
    try {
      const url = await pgnet.statusUrl();
      const counts = new Map([[a, 3], [b, 5], [c, 7]]);
      for (const [db, n] of counts) await enqueue(db, n);
      for (const [db, n] of counts) {
        await waitFor(async () => (await answered(db)) === n, 10_000, `${db.name}'s answers`);
      }
      for (const [db, n] of counts) {
        const seen = receivedFor(db).map((r) => r.query.get("n"));
        expect({ db: db.name, seen: seen.sort() }).toEqual({
          db: db.name,
          seen: Array.from({ length: n }, (_, i) => String(i + 1)).sort(),
        });
      }
      const status = await json(`${url}/status`) as {
        database: string;
        counters: { succeeded: number };
        databases: { name: string; database: string; state: string; counters: { succeeded: number } }[];
      };
      expect(status.database).toBe("3 databases");
      expect(status.counters.succeeded).toBe(15);
      expect(status.databases.map((d) => [d.name, d.state, d.counters.succeeded])).toEqual([
        [a.name, "running", 3],
        [b.name, "running", 5],
        [c.name, "running", 7],
      ]);
      // c is on another server: another port
      expect(new Set(status.databases.map((d) => d.database.split("/")[0])).size).toBe(2);
      const metrics = await (await fetch(`${url}/metrics`)).text();
      for (const [db, n] of counts) {
        expect(metrics).toContain(`pgnet_requests_total{outcome="success",host="other",database="${db.name}"} ${n}`);
        expect(metrics).toContain(`pgnet_up{database="${db.name}"} 1`);
      }
      // each worker's lines say which database they are about
      for (const db of [a, b, c]) {
        expect(pgnet.lines.some((l) => l.includes("worker started") && l.includes(`database=${db.name}`))).toBe(true);
      }
    } finally {
      expect(await pgnet.stop()).toBe(0);
    }
  });

  test("a database dropped while pgnet runs: the others are served on, and the log says what happened", async () => {
    const doomed = await createDatabase();
    const pgnet = new PgnetProcess([
      ...["--database", a.url, "--database", doomed.url],
      ...["--status-port", "0", "--poll-interval", "200ms"],
    ]);
    try {
      const url = await pgnet.statusUrl();
      await waitFor(() => pgnet.lines.filter((l) => l.includes("worker started")).length === 2, 10_000, "two workers");
      const before = await answered(a);
      await doomed.drop();
      await waitFor(
        () => pgnet.lines.some((l) => l.includes(`database=${doomed.name}`) && l.includes("does not exist")),
        10_000,
        "the dropped database's line",
      );
      await enqueue(a, 4);
      await waitFor(async () => (await answered(a)) === before + 4, 10_000, "a's answers");
      const health = await fetch(`${url}/health`);
      expect(health.status).toBe(200); // one database is still served
      const body = await health.json() as { databases: { name: string; ok: boolean }[] };
      expect(body.databases.map((d) => [d.name, d.ok])).toEqual([[a.name, true], [doomed.name, false]]);
      // said once while it stays gone, not at every reconnection attempt
      await new Promise((r) => setTimeout(r, 1500));
      const lines = pgnet.lines.filter((l) => l.includes(`database=${doomed.name}`) && l.includes("does not exist"));
      expect(lines).toHaveLength(1);
    } finally {
      expect(await pgnet.stop()).toBe(0);
    }
  });

  test("a database that cannot be reached at start waits alone, and is served once it exists", async () => {
    const late = `late_${process.pid}`;
    const lateUrl = a.url.replace(a.name, late);
    const pgnet = new PgnetProcess([
      ...["--database", a.url, "--database", lateUrl],
      ...["--status-port", "0", "--poll-interval", "200ms"],
    ]);
    try {
      const url = await pgnet.statusUrl();
      const status = await json(`${url}/status`) as { databases: { name: string; state: string; error?: unknown }[] };
      expect(status.databases.map((d) => [d.name, d.state])).toEqual([[a.name, "running"], [late, "unreachable"]]);
      expect(pgnet.lines.some((l) => l.includes("cannot serve this database yet") && l.includes(late))).toBe(true);
      const [id] = await enqueue(a, 1);
      expect((await responseFor(a.sql, id!)).status_code).toBe(200);
      await a.sql.unsafe(`create database ${late} template pgnet_template`);
      await pgnet.waitForLine(new RegExp(`serving this database now.*database=${late}`), 20_000);
    } finally {
      expect(await pgnet.stop()).toBe(0);
      await a.sql.unsafe(`drop database if exists ${late} with (force)`);
    }
  });

  test("--all-databases serves the databases with schema net, picks up one that installs it, lets go of one that drops it", async () => {
    const bare = await createDatabase({ installed: false });
    const pgnet = new PgnetProcess([
      ...["--all-databases", "--database", a.url, "--discovery-interval", "200ms"],
      ...["--status-port", "0", "--poll-interval", "200ms"],
    ]);
    try {
      const url = await pgnet.statusUrl();
      const served = async () => ((await json(`${url}/status`)).databases as { name: string }[]).map((d) => d.name);
      await waitFor(async () => (await served()).includes(b.name), 10_000, "b served");
      expect(await served()).toContain(a.name);
      expect(await served()).not.toContain(bare.name);
      expect(await served()).not.toContain("pgnet_template"); // a template database
      // schema net arrives
      await install(bare.sql);
      await waitFor(async () => (await served()).includes(bare.name), 10_000, "the new database served");
      expect(pgnet.lines.some((l) => l.includes("serving a database that has schema net") && l.includes(bare.name)))
        .toBe(true);
      await enqueue(bare, 2);
      await waitFor(async () => (await answered(bare)) === 2, 10_000, "its answers");
      // and goes
      await bare.sql`drop schema net cascade`;
      await waitFor(async () => !(await served()).includes(bare.name), 10_000, "the database let go");
      expect(pgnet.lines.some((l) => l.includes("no longer serving this database: schema net is gone"))).toBe(true);
    } finally {
      expect(await pgnet.stop()).toBe(0);
      await bare.drop();
    }
  });
});

inProcess.describe("fairness", () => {
  test("100 requests in one database are done while another database's backlog of 10,000 still waits", async () => {
    const log = memoryLogger();
    // a small window and slow answers for the backlog make its drain take seconds
    const fleet = new Fleet({ logger: log, flags: { concurrency: "32", "poll-interval": "200ms" }, env: {} });
    try {
      const busy = await enqueue(a, 10_000, "/delay/10");
      await fleet.add({ url: a.url }, a.name, { retry: false });
      await fleet.add({ url: b.url }, b.name, { retry: false });
      await waitFor(() => receivedFor(a).length >= 200, 10_000, "the backlog to be under way");
      const before = await answered(b);
      await enqueue(b, 100);
      await waitFor(async () => (await answered(b)) === before + 100, 10_000, "the 100");
      expect((await unanswered(a.sql, busy)).n).toBeGreaterThan(5000);
      expect(fleet.window.used).toBeLessThanOrEqual(32);
    } finally {
      await fleet.stop(0);
      await forgetRequests(a.sql);
    }
  }, 60_000);
});

/**
 * ALTER SYSTEM SET (or RESET, for null) pg_net.database_name. PostgreSQL 14–16 take ALTER SYSTEM only for a setting
 * the session knows: SET makes it known first (17 and later need not).
 */
async function databaseName(value: string | null): Promise<void> {
  const session = await a.sql.reserve();
  try {
    await session`select set_config('pg_net.database_name', ${value ?? ""}, false)`;
    if (value === null) await session`alter system reset pg_net.database_name`;
    else await session.unsafe(`alter system set pg_net.database_name = '${value}'`);
    await session`reset all`;
  } finally {
    session.release();
  }
}

describe("pg_net's settings", () => {
  test("pg_net.database_name chooses the database of a server URL, and net.worker_restart() moves to a new one", async () => {
    const server = a.url.replace(/\/[^/?]*(\?|$)/, "/$1");
    expect(server).not.toContain(a.name);
    await databaseName(a.name);
    await a.sql`select pg_reload_conf()`;
    const pgnet = new PgnetProcess(["--database", server, "--status-port", "off", "--poll-interval", "200ms"]);
    try {
      await pgnet.waitForLine(new RegExp(`serving the database pg_net.database_name names.*database=${a.name}`));
      await pgnet.waitForLine(/worker started/);
      const [id] = await enqueue(a, 1);
      expect((await responseFor(a.sql, id!)).status_code).toBe(200);
      await databaseName(b.name);
      await a.sql`select net.worker_restart()`; // reloads the configuration too, as pg_net's does
      await pgnet.waitForLine(new RegExp(`no longer serving this database: pg_net.database_name now names ${b.name}`));
      await pgnet.waitForLine(new RegExp(`worker started.*database=${b.name}|database=${b.name}.*worker started`));
      const [other] = await enqueue(b, 1);
      expect((await responseFor(b.sql, other!)).status_code).toBe(200);
    } finally {
      expect(await pgnet.stop()).toBe(0);
      await databaseName(null);
      await a.sql`select pg_reload_conf()`;
    }
  });

  inProcess.test("pg_net.username names the role pgnet's statements run as, read again on restart; never a superuser", async () => {
    const d = await createDatabase();
    const role = `pgnet_runner_${process.pid}`;
    const outsider = `pgnet_outsider_${process.pid}`;
    await d.sql.unsafe(`create role ${role} nologin in role pgnet_worker`);
    await d.sql.unsafe(`create role ${outsider} nologin`);
    // a trigger on the response table records the role the worker's store ran as
    await d.sql.unsafe(`
      create table public.stored_by (role text);
      grant insert on public.stored_by to public;
      create function public.record_role() returns trigger language plpgsql as
        $$ begin insert into public.stored_by values (current_user); return null; end $$;
      create trigger record_role after insert on net._http_response
        for each statement execute function public.record_role();
    `);
    const roles = async () => (await d.sql`select role from public.stored_by`).map((r) => r.role as string);
    const get = async () => {
      const [{ id }] = await d.sql`select net.http_get(${fixture.url("/echo")}) as id` as unknown as [{ id: string }];
      expect((await responseFor(d.sql, id)).status_code).toBe(200);
    };
    try {
      const log = memoryLogger();
      const worker = await startWorker(d.url, {}, log);
      try {
        await get();
        expect(await roles()).toEqual(["pgnet_worker"]);
        await d.sql.unsafe(`alter database ${d.name} set pg_net.username = '${role}'`);
        await worker.restart();
        expect(worker.status().sources.role).toBe("database");
        await get();
        expect(await roles()).toEqual(["pgnet_worker", role]);
      } finally {
        await worker.stop();
      }
      const log2 = memoryLogger();
      const again = await startWorker(d.url, {}, log2);
      await again.stop();
      expect(log2.lines.some((l) => l.includes(`statements run as ${role}`))).toBe(true);
      const [{ superuser }] = await d.sql`select current_user as superuser` as unknown as [{ superuser: string }];
      await d.sql.unsafe(`alter database ${d.name} set pg_net.username = '${superuser}'`);
      await expect(startWorker(d.url)).rejects.toThrow(
        `pg_net.username names ${superuser}, a superuser: pgnet's statements never run as one`,
      );
      await d.sql.unsafe(`alter database ${d.name} set pg_net.username = '${outsider}'`);
      await expect(startWorker(d.url)).rejects.toThrow(
        `pg_net.username names ${outsider}, which is not a member of pgnet_worker: grant pgnet_worker to ${outsider}`,
      );
    } finally {
      await d.drop();
      await a.sql.unsafe(`drop role if exists ${role}`);
      await a.sql.unsafe(`drop role if exists ${outsider}`);
    }
  });
});
