// The privilege model against real roles: every attack of an ordinary role fails or has no effect, the victim's
// request is still delivered once to the right place, and pg_net's calling surface keeps working for every role.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import type { Sql } from "../src/db.ts";
import { install, setPrivileges } from "../src/installer.ts";
import { MIGRATIONS } from "../src/migrations.ts";
import type { Worker } from "../src/worker.ts";
import { createDatabase, rawClient, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture, header } from "./helpers/fixture.ts";
import { memoryLogger, responseFor, startWorker, waitFor } from "./helpers/worker.ts";

let db: TestDatabase;
let fixture: Fixture;
let worker: Worker;
const logger = memoryLogger();
const password = randomBytes(12).toString("hex");
const roles = ["pgnet_t_alice", "pgnet_t_mallory", "pgnet_t_bob", "pgnet_t_before", "pgnet_t_owner"] as const;
const clients: Sql[] = [];

/** A connection that logs in as `role`. */
function as(role: string): Sql {
  const url = new URL(db.url);
  url.username = role;
  url.password = password;
  const client = rawClient(url.toString(), { max: 1, fetch_types: false }) as unknown as Sql;
  clients.push(client);
  return client;
}

let alice: Sql;
let mallory: Sql;
let bob: Sql;

beforeAll(async () => {
  // one role exists before schema net is installed, the others are created after
  db = await createDatabase({ installed: false });
  await db.sql.unsafe(`create role pgnet_t_before login password '${password}'`);
  await install(db.sql);
  for (const role of roles.slice(0, 3)) await db.sql.unsafe(`create role ${role} login password '${password}'`);
  await db.sql.unsafe(`grant create on schema public to pgnet_t_alice, pgnet_t_mallory`);
  fixture = await Fixture.start();
  worker = await startWorker(db.url, {}, logger);
  [alice, mallory, bob] = [as("pgnet_t_alice"), as("pgnet_t_mallory"), as("pgnet_t_bob")];
});

afterAll(async () => {
  await worker.stop({ timeout: 1000 });
  await Promise.all(clients.map((c) => c.end({ timeout: 1 })));
  await fixture.stop();
  await db.drop();
  for (const role of roles) await db.sql.unsafe(`drop role if exists ${role}`).catch(() => {});
});

async function enqueue(sql: Sql, path: string): Promise<string> {
  const [row] = await sql`select net.http_get(${fixture.url(path)}, '{}', '{"Authorization": "Bearer secret"}') as id`;
  return String(row!.id);
}

/** The requests the fixture received for a request id. */
function deliveries(id: string) {
  return fixture.requests.filter((r) => header(r, "X-Pgnet-Request-Id").includes(id));
}

/** Asserts the victim's request reached the fixture once and its response is hers to read. */
async function deliveredOnce(id: string, owner: Sql = alice, path = "/echo") {
  const row = await responseFor(db.sql, id);
  expect(row.status_code).toBe(200);
  expect(deliveries(id).map((r) => r.path)).toEqual([path]);
  const [own] = await owner`select status_code from net._http_response where id = ${id}::bigint`;
  expect(own?.status_code).toBe(200);
}

const denied = /permission denied|must be owner/;

describe("attacks by an ordinary role", () => {
  test("a trigger on the queue cannot be created, so the worker's claim cannot make anyone superuser", async () => {
    await mallory.unsafe(`
      create function public.pgnet_t_escalate() returns trigger language plpgsql as $$
      begin
        if current_user <> 'pgnet_t_mallory' then execute 'alter role pgnet_t_mallory superuser'; end if;
        return new;
      end $$`);
    await expect(mallory.unsafe(`
      create trigger x before update on net.http_request_queue
        for each row execute function public.pgnet_t_escalate()`)).rejects.toThrow(denied);
    const id = await enqueue(alice, "/echo");
    await deliveredOnce(id);
    const [role] = await db.sql`select rolsuper from pg_roles where rolname = 'pgnet_t_mallory'`;
    expect(role!.rolsuper).toBe(false);
  });

  test("another role's queued headers and stored responses are invisible", async () => {
    await worker.stop({ timeout: 1000 }); // so alice's request stays queued while mallory looks
    let restarted = false;
    try {
      const id = await enqueue(alice, "/echo");
      expect(await mallory`select * from net.http_request_queue`).toHaveLength(0);
      const [own] = await alice`select headers from net.http_request_queue where id = ${id}::bigint`;
      expect(own!.headers).toEqual({ Authorization: "Bearer secret" });
      worker = await startWorker(db.url, {}, logger);
      restarted = true;
      await deliveredOnce(id);
      expect(await mallory`select * from net._http_response where id = ${id}::bigint`).toHaveLength(0);
      // in flight, the request is in net._http_claim: as hidden there
      const slow = await enqueue(alice, "/delay/1500");
      await waitFor(() => deliveries(slow).length === 1, 5000, "alice's slow request to be in flight");
      expect(await mallory`select * from net._http_claim`).toHaveLength(0);
      const [held] = await alice`select headers from net._http_claim where id = ${slow}::bigint`;
      expect(held!.headers).toEqual({ Authorization: "Bearer secret" });
      expect((await responseFor(db.sql, slow)).status_code).toBe(200);
      const [collected] = await mallory`select status, message from net._http_collect_response(${id}::bigint)`;
      expect(collected).toEqual({ status: "ERROR", message: "request matching request_id not found" });
    } finally {
      if (!restarted) worker = await startWorker(db.url, {}, logger);
    }
  });

  test("another role's request cannot be pointed elsewhere, nor its lease edited, nor deleted", async () => {
    await worker.stop({ timeout: 1000 });
    const id = await enqueue(alice, "/echo");
    try {
      const attempts = [
        mallory`update net.http_request_queue set url = 'http://127.0.0.1:1/mine'`,
        mallory`update net._http_claim set lease_until = now() + interval '1 year', claimed_by = 'x'`,
        mallory`update net._http_claim set not_before = now() + interval '1 year'`,
        mallory`update net._http_claim set url = 'http://127.0.0.1:1/mine'`,
        mallory`delete from net.http_request_queue`,
        mallory`delete from net._http_claim`,
        mallory`select id from net.http_request_queue for key share`,
        mallory`select id from net._http_claim for key share`,
      ];
      for (const attempt of attempts) await expect(attempt).rejects.toThrow(denied);
      const [cancelled] = await mallory`select net.http_cancel(${id}::bigint) as ok`;
      expect(cancelled!.ok).toBe(false);
    } finally {
      worker = await startWorker(db.url, {}, logger);
    }
    await deliveredOnce(id);
  });

  test("a forged response cannot be inserted, and ids cannot be made to collide with setval", async () => {
    const [{ next }] = await db
      .sql`select pg_get_serial_sequence('net.http_request_queue', 'id') as next` as unknown as [
        { next: string },
      ];
    await expect(mallory`
      insert into net._http_response (id, status_code, content) values (999999999, 200, 'forged')
    `).rejects.toThrow(denied);
    await expect(mallory`select setval(${next}::regclass, 1)`).rejects.toThrow(denied);
    await expect(mallory`select nextval(${next}::regclass)`).rejects.toThrow(denied);
    const id = await enqueue(alice, "/echo");
    await deliveredOnce(id);
  });

  test("neither table can be truncated or locked, so callers of net.http_get cannot be made to hang", async () => {
    for (const table of ["net.http_request_queue", "net._http_claim", "net._http_response"]) {
      await expect(mallory.unsafe(`truncate ${table}`)).rejects.toThrow(denied);
      await expect(mallory.begin((tx) => tx.unsafe(`lock table ${table} in access exclusive mode`))).rejects.toThrow(
        denied,
      );
      await expect(mallory.begin((tx) => tx.unsafe(`lock table ${table} in share row exclusive mode`))).rejects
        .toThrow(denied);
    }
    await expect(mallory.unsafe(`alter table net.http_request_queue disable row level security`)).rejects.toThrow(
      denied,
    );
    const id = await enqueue(alice, "/echo");
    await deliveredOnce(id);
  });

  test("a role cannot enqueue in another's name or set pgnet's own columns; its own direct insert works", async () => {
    await expect(mallory`
      insert into net.http_request_queue (method, url, timeout_milliseconds, enqueued_by)
      values ('GET', ${fixture.url("/echo")}, 1000, 'pgnet_t_alice')
    `).rejects.toThrow(denied);
    // nor forge a request a worker already holds (it would run in alice's name, unchecked by the enqueue)
    await expect(mallory`
      insert into net._http_claim (id, method, url, timeout_milliseconds, enqueued_at, enqueued_by, claimed_by)
      values (999999, 'GET', ${fixture.url("/echo")}, 1000, now(), 'pgnet_t_alice', 'someone')
    `).rejects.toThrow(denied);
    const [row] = await mallory`
      insert into net.http_request_queue (method, url, headers, timeout_milliseconds)
      values ('GET', ${fixture.url("/echo")}, '{}', 1000) returning id, enqueued_by
    `;
    expect(row!.enqueued_by).toBe("pgnet_t_mallory");
    await mallory`select net.wake()`;
    await deliveredOnce(String(row!.id), mallory);
  });

  test("a bare NOTIFY on the control channel does not restart the worker; worker_restart() does, a second apart", async () => {
    const pid = async () =>
      (await db.sql`select pid from pg_stat_activity where application_name like 'pgnet % worker'`)[0]?.pid;
    const before = await pid();
    const restarts = () => logger.lines.filter((l) => l.includes("worker restarting")).length;
    const counted = restarts();
    await mallory`select pg_notify('pgnet_control', 'restart')`;
    await mallory`select pg_notify('pgnet_control', '')`;
    await Bun.sleep(1500);
    expect(restarts()).toBe(counted);
    expect(await pid()).toBe(before);
    // five calls in quick succession: one restart at once, the rest folded into one a second later
    for (let i = 0; i < 5; i++) await mallory`select net.worker_restart()`;
    await waitFor(() => restarts() >= counted + 1, 5000, "a restart");
    await Bun.sleep(2500);
    expect(restarts() - counted).toBeLessThanOrEqual(2);
    expect(await pid()).not.toBe(before);
  });

  test("revoking EXECUTE on worker_restart() takes the right to restart away", async () => {
    await db.sql`revoke execute on function net.worker_restart() from public`;
    try {
      await expect(mallory`select net.worker_restart()`).rejects.toThrow(denied);
    } finally {
      await db.sql`grant execute on function net.worker_restart() to public`;
    }
  });

  test("functions planted on a hostile search_path are never called by the worker", async () => {
    // as on PostgreSQL 14 and older, where every role may create in public, and a database whose search_path
    // puts public before pg_catalog: unqualified now() and make_interval(secs => ...) would resolve to these
    await db.sql.unsafe(`alter database ${db.name} set search_path = public, pg_catalog`);
    await mallory.unsafe(`
      create table public.pgnet_t_captured (who name, what text);
      grant insert on public.pgnet_t_captured to public;
      create function public.now() returns timestamptz language sql as
        $$ insert into public.pgnet_t_captured values (current_user, 'now') returning pg_catalog.now() $$;
      create function public.make_interval(secs text) returns interval language sql as
        $$ insert into public.pgnet_t_captured values (current_user, 'make_interval') returning interval '1 hour' $$;
      create function public.make_interval(secs double precision) returns interval language sql as
        $$ insert into public.pgnet_t_captured values (current_user, 'make_interval') returning interval '1 hour' $$;
    `);
    try {
      await worker.restart(); // new sessions: the database's search_path would apply to them
      const id = await enqueue(alice, "/echo");
      await deliveredOnce(id);
      expect(await db.sql`select * from public.pgnet_t_captured`).toHaveLength(0);
    } finally {
      await db.sql.unsafe(`alter database ${db.name} reset search_path`);
      await db.sql.unsafe(`drop table public.pgnet_t_captured; drop function public.now();
                          drop function public.make_interval(text); drop function public.make_interval(double precision)`);
    }
  });
});

describe("pg_net's calling surface, for every role", () => {
  for (
    const [label, role] of [["a role created before the install", "pgnet_t_before"], [
      "a role created after it",
      "pgnet_t_bob",
    ]] as const
  ) {
    test(`${label} enqueues, reads its response, collects, waits and restarts`, async () => {
      const sql = role === "pgnet_t_bob" ? bob : as(role);
      const id = await enqueue(sql, "/echo");
      const [done] = await sql`
        select status, (response).status_code from net._http_collect_response(${id}::bigint, async => false)
      `;
      expect(done).toEqual({ status: "SUCCESS", status_code: 200 });
      const [row] = await sql`select status_code, enqueued_by from net._http_response where id = ${id}::bigint`;
      expect({ ...row }).toEqual({ status_code: 200, enqueued_by: role });
      const [own] = await sql`select net._await_response(${id}::bigint) as ok`;
      expect(own!.ok).toBe(true);
      const [restart] = await sql`select net.worker_restart() as ok`;
      expect(restart!.ok).toBe(true);
      await sql`select net.wait_until_running()`;
      await sql`select net.check_worker_is_up()`;
      // and cancels its own queued request
      await worker.stop({ timeout: 1000 });
      try {
        const queued = await enqueue(sql, "/status/200");
        const [cancel] = await sql`select net.http_cancel(${queued}::bigint) as ok`;
        expect(cancel!.ok).toBe(true);
        expect(await sql`select 1 from net.http_request_queue where id = ${queued}::bigint`).toHaveLength(0);
      } finally {
        worker = await startWorker(db.url, {}, logger);
      }
    });
  }

  test("a trigger owned by an ordinary role enqueues for whoever fires it; a SECURITY DEFINER function for its owner", async () => {
    await alice.unsafe(`
      create table public.pgnet_t_orders (id int);
      grant insert on public.pgnet_t_orders to pgnet_t_bob;
      create function public.pgnet_t_hook() returns trigger language plpgsql as $$
      begin
        perform net.http_post('${fixture.url("/echo")}', jsonb_build_object('order', new.id));
        return new;
      end $$;
      create trigger hook after insert on public.pgnet_t_orders for each row execute function public.pgnet_t_hook();
      create function public.pgnet_t_definer() returns bigint language sql security definer
        set search_path = pg_catalog, pg_temp
        as $$ select net.http_get('${fixture.url("/echo")}') $$;
      grant execute on function public.pgnet_t_definer() to pgnet_t_bob;
    `);
    await bob`insert into public.pgnet_t_orders values (7)`;
    const [viaDefiner] = await bob`select public.pgnet_t_definer() as id`;
    await waitFor(async () =>
      (await db
        .sql`select count(*)::int as n from net._http_response where enqueued_by in ('pgnet_t_bob', 'pgnet_t_alice')
                     and id >= ${viaDefiner!.id}::bigint - 1`)[0]!.n >= 2
    );
    const [mine] = await bob`select id from net._http_response order by id desc limit 1`;
    expect(JSON.parse((await responseFor(db.sql, mine!.id)).content!).body).toBe('{"order": 7}');
    const [definer] = await db.sql`select enqueued_by from net._http_response where id = ${viaDefiner!.id}::bigint`;
    expect(definer!.enqueued_by).toBe("pgnet_t_alice");
  });
});

describe("the worker's role", () => {
  test("is pgnet_worker, neither superuser nor owner, even in a trigger the owner adds", async () => {
    await db.sql.unsafe(`
      create table public.pgnet_t_seen (who name, superuser text);
      grant insert on public.pgnet_t_seen to pgnet_worker;
      create function public.pgnet_t_record() returns trigger language plpgsql as $$
      begin
        insert into public.pgnet_t_seen values (current_user, current_setting('is_superuser'));
        return new;
      end $$;
      create trigger record after insert on net._http_response for each row execute function public.pgnet_t_record();
    `);
    try {
      const id = await enqueue(alice, "/echo");
      await deliveredOnce(id);
      const seen = await db.sql`select distinct who, superuser from public.pgnet_t_seen`;
      expect(seen.map((r) => ({ ...r }))).toEqual([{ who: "pgnet_worker", superuser: "off" }]);
      expect(logger.lines.some((l) => l.includes("statements run as pgnet_worker"))).toBe(true);
    } finally {
      await db.sql.unsafe(`drop trigger record on net._http_response; drop table public.pgnet_t_seen;
                          drop function public.pgnet_t_record()`);
    }
  });
});

describe("pg_net's privileges, on request", () => {
  test("install --privileges pg_net restores pg_net's grants, and --privileges pgnet takes them back", async () => {
    await worker.stop({ timeout: 1000 });
    const id = await enqueue(alice, "/echo");
    try {
      await setPrivileges(db.sql, "pg_net");
      expect((await mallory`select id from net.http_request_queue where id = ${id}::bigint`).length).toBe(1);
      await mallory`update net.http_request_queue set timeout_milliseconds = 4000 where id = ${id}::bigint`;
      const logged = memoryLogger();
      const probe = await startWorker(db.url, {}, logged);
      await probe.stop({ timeout: 1000 });
      expect(logged.lines.some((l) => l.includes("pg_net's privileges are in force"))).toBe(true);
    } finally {
      await setPrivileges(db.sql, "pgnet");
      worker = await startWorker(db.url, {}, logger);
    }
    expect(await mallory`select id from net.http_request_queue`).toHaveLength(0);
    await deliveredOnce(id);
  });
});

describe("installing and running without a superuser", () => {
  test("a role that owns its database installs; a role holding only pgnet_worker runs the worker", async () => {
    const { admin, pg } = await (await import("./helpers/cluster.ts")).cluster();
    const name = `pgnet_t_owned_${process.pid}`;
    await db.sql.unsafe(`create role pgnet_t_owner login createrole password '${password}'`);
    await db.sql.unsafe(`create role pgnet_t_runner login password '${password}' in role pgnet_worker`);
    await admin.unsafe(`create database ${name} owner pgnet_t_owner`);
    const url = (role: string) => {
      const u = new URL(pg.url(name));
      [u.username, u.password] = [role, password];
      return u.toString();
    };
    const owner = rawClient(url("pgnet_t_owner"), { max: 1, fetch_types: false }) as unknown as Sql;
    const runner = rawClient(url("pgnet_t_runner"), { max: 1, fetch_types: false }) as unknown as Sql;
    try {
      expect((await install(owner)).applied.length).toBeGreaterThan(0);
      expect((await install(runner)).applied).toEqual([]); // what `pgnet run` does first: nothing to install
      const running = await startWorker(url("pgnet_t_runner"));
      try {
        const [row] = await owner`select net.http_get(${fixture.url("/echo")}) as id`;
        expect((await responseFor(owner, row!.id)).status_code).toBe(200);
      } finally {
        await running.stop({ timeout: 1000 });
      }
    } finally {
      await owner.end();
      await runner.end();
      await admin.unsafe(`drop database ${name} with (force)`);
      await db.sql.unsafe(`drop role pgnet_t_runner`);
    }
  });

  test("an installing role that may not create roles is told what an administrator must run", async () => {
    const { admin, pg } = await (await import("./helpers/cluster.ts")).cluster();
    const name = `pgnet_t_nocreate_${process.pid}`;
    await db.sql.unsafe(`create role pgnet_t_plain login password '${password}'`);
    await admin.unsafe(`create database ${name} owner pgnet_t_plain`);
    const u = new URL(pg.url(name));
    [u.username, u.password] = ["pgnet_t_plain", password];
    const plain = rawClient(u.toString(), { max: 1, fetch_types: false }) as unknown as Sql;
    // pgnet_worker is shared by the cluster; hide it for the length of this test
    await admin.unsafe(`alter role pgnet_worker rename to pgnet_worker_hidden`);
    try {
      const error = await install(plain).catch((e) => e);
      expect(String(error.message)).toContain("pgnet install needs to create the role pgnet_worker");
      expect(String(error.hint)).toContain("CREATE ROLE pgnet_worker NOLOGIN; GRANT pgnet_worker TO pgnet_t_plain");
    } finally {
      await admin.unsafe(`alter role pgnet_worker_hidden rename to pgnet_worker`);
      await plain.end();
      await admin.unsafe(`drop database ${name} with (force)`);
      await db.sql.unsafe(`drop role pgnet_t_plain`);
    }
  });
});

describe("upgrading in place", () => {
  test("a database on the previous schema keeps its queued requests and responses; ids keep counting", async () => {
    const old = await createDatabase({ installed: false });
    try {
      await install(old.sql, { through: 2 });
      const queued = await old.sql`
        select net.http_get(${fixture.url("/echo")}) as id from generate_series(1, 3)
      `;
      await old.sql`
        insert into net._http_response (id, status_code, content) values (1000, 200, 'kept')
      `;
      expect((await install(old.sql)).applied).toEqual(MIGRATIONS.map((m) => m.version).filter((v) => v > 2));
      const [kept] = await old.sql`select content, enqueued_by from net._http_response where id = 1000`;
      expect({ ...kept }).toEqual({ content: "kept", enqueued_by: "postgres" });
      const owners = await old.sql`select distinct enqueued_by from net.http_request_queue`;
      expect(owners.map((r) => r.enqueued_by)).toEqual(["postgres"]);
      const [next] = await old.sql`select net.http_get(${fixture.url("/echo")}) as id`;
      expect(Number(next!.id)).toBeGreaterThan(1000);
      const upgraded = await startWorker(old.url);
      try {
        for (const { id } of [...queued, next!]) expect((await responseFor(old.sql, id)).status_code).toBe(200);
      } finally {
        await upgraded.stop({ timeout: 1000 });
      }
    } finally {
      await old.drop();
    }
  });

  test("the claim table (sql/0010) takes the rows a worker held or holds, state and all; the rest stay queued", async () => {
    const old = await createDatabase({ installed: false });
    try {
      await install(old.sql, { through: 9 });
      const url = (name: string) => fixture.url(`/echo?upgrade=${name}`);
      const [a, b, c, d] = await old.sql`
        select net.http_get(${url("queued")}) as id union all select net.http_get(${url("held")})
        union all select net.http_get(${url("waiting")}) union all select net.http_get(${url("given-back")})
      `;
      // as the queue had them: one held by a worker whose lease ran out, one waiting out a retry's backoff, one
      // given back after two claims
      await old.sql`update net.http_request_queue set claimed_by = 'gone', lease_until = now() - interval '1 s',
                      attempts = 1 where id = ${b!.id}`;
      await old.sql`update net.http_request_queue set not_before = now() + interval '1 hour', attempts = 1,
                      retried = 1, last_error = 'HTTP 503' where id = ${c!.id}`;
      await old.sql`update net.http_request_queue set attempts = 2 where id = ${d!.id}`;
      expect((await install(old.sql)).applied).toEqual([10, 11, 12]);
      const queued = await old.sql`select id from net.http_request_queue`;
      expect(queued.map((r) => r.id)).toEqual([a!.id]);
      const held = await old.sql`
        select id, attempts, retried, last_error, claimed_by, not_before > now() as waiting
          from net._http_claim order by id
      `;
      expect(held.map((r) => ({ ...r }))).toEqual([
        { id: b!.id, attempts: 1, retried: 0, last_error: null, claimed_by: "gone", waiting: null },
        { id: c!.id, attempts: 1, retried: 1, last_error: "HTTP 503", claimed_by: null, waiting: true },
        { id: d!.id, attempts: 2, retried: 0, last_error: null, claimed_by: null, waiting: null },
      ]);
      const columns = await old.sql`
        select attname from pg_attribute
         where attrelid = 'net.http_request_queue'::regclass and attnum > 0 and not attisdropped order by attnum
      `;
      expect(columns.map((r) => r.attname)).not.toContain("claimed_by");
      const upgraded = await startWorker(old.url);
      try {
        // the queued one, the one whose lease ran out and the one given back are sent; the retry keeps waiting
        for (const [row, attempts] of [[a!, 1], [b!, 2], [d!, 3]] as const) {
          expect({ id: row.id, attempts: (await responseFor(old.sql, row.id)).attempts }).toEqual({
            id: row.id,
            attempts,
          });
        }
        expect((await old.sql`select 1 from net._http_claim where id = ${c!.id}`).length).toBe(1);
      } finally {
        await upgraded.stop({ timeout: 1000 });
      }
    } finally {
      await old.drop();
    }
  });
});
