// The worker end to end: SQL calls in, HTTP to a local fixture, rows in net._http_response.

import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture, header } from "./helpers/fixture.ts";
import { install, uninstall } from "../src/installer.ts";
import { memoryLogger, responseFor, startWorker, unanswered, waitFor } from "./helpers/worker.ts";
import { VERSION } from "../src/version.ts";
import type { Worker } from "../src/worker.ts";
import { connect } from "../src/db.ts";
import { Queue } from "../src/queue.ts";

let db: TestDatabase;
let fixture: Fixture;
let worker: Worker | undefined;

beforeAll(async () => {
  db = await createDatabase();
  fixture = await Fixture.start();
});
afterEach(async () => {
  await worker?.stop({ timeout: 1000 });
  worker = undefined;
});
afterAll(async () => {
  await fixture.stop();
  await db.drop();
});

async function one<T = Record<string, unknown>>(query: Promise<unknown>): Promise<T> {
  return ((await query) as T[])[0]!;
}

async function enqueue(query: Promise<unknown>): Promise<string> {
  return (await one<{ id: string }>(query)).id;
}

/** The pids of the worker's LISTEN sessions in this database. */
async function listenerPids(): Promise<number[]> {
  return (await db.sql`
    select pid from pg_stat_activity where datname = ${db.name} and application_name like 'pgnet % worker'
  `).map((r) => r.pid as number);
}

/** Waits until the worker listens on one session, other than `before`. */
async function newListener(before: number): Promise<void> {
  let seen: number[] = [];
  await waitFor(
    async () => {
      seen = await listenerPids();
      return seen.length === 1 && seen[0] !== before;
    },
    5000,
    `one listener session other than ${before}`,
  ).catch((e) => {
    throw new Error(`${e.message}: now ${JSON.stringify(seen)}`);
  });
}

/**
 * How many times the fixture received each of `ids` on `path`, counting from its `from`th request (ids start
 * again at 1 after a new install, so earlier requests may carry the same ones).
 */
function deliveries(path: string, ids: string[], from: number): number[] {
  const received = fixture.requests.slice(from).filter((r) => r.path === path)
    .map((r) => header(r, "X-Pgnet-Request-Id")[0]);
  return ids.map((id) => received.filter((r) => r === id).length);
}

describe("requests", () => {
  test("http_get() sends a GET with params and headers and stores the response", async () => {
    worker = await startWorker(db.url);
    const id = await enqueue(db.sql`
      select net.http_get(${fixture.url("/headers")}, '{"q": "a b", "n": 1}', '{"X-Token": "t1", "X-Num": 2}') as id
    `);
    const row = await responseFor(db.sql, id);
    expect(row).toMatchObject({
      status_code: 200,
      content_type: "text/plain; charset=utf-8",
      content: "with headers",
      timed_out: false,
      error_msg: null,
    });
    expect(row.headers).toMatchObject({
      "Content-Type": "text/plain; charset=utf-8",
      "X-Custom": "spaced",
      ETag: '"v1"',
    });
    const [sent] = fixture.received("/headers").slice(-1);
    expect(sent!.method).toBe("GET");
    expect(sent!.target).toBe("/headers?n=1&q=a%20b");
    expect(header(sent!, "X-Token")).toEqual(["t1"]);
    expect(header(sent!, "X-Num")).toEqual(["2"]);
    expect(header(sent!, "User-Agent")).toEqual(["pg_net/0.20.4"]);
    expect(header(sent!, "X-Pgnet-Request-Id")).toEqual([id]);
  });

  test("http_post() sends the JSON body with Content-Type application/json", async () => {
    worker = await startWorker(db.url);
    const id = await enqueue(db.sql`select net.http_post(${fixture.url("/echo")}, '{"b": [1, 2], "a": "x"}') as id`);
    const row = await responseFor(db.sql, id);
    const echoed = JSON.parse(row.content!);
    expect(echoed.method).toBe("POST");
    expect(echoed.body).toBe('{"a": "x", "b": [1, 2]}');
    expect(echoed.headers).toContainEqual(["Content-Type", "application/json"]);
    expect(echoed.headers).toContainEqual(["Content-Length", "23"]);
  });

  test("http_post() without a body sends an empty POST", async () => {
    worker = await startWorker(db.url);
    const id = await enqueue(db.sql`select net.http_post(${fixture.url("/echo")}, body => null) as id`);
    const echoed = JSON.parse((await responseFor(db.sql, id)).content!);
    expect(echoed.method).toBe("POST");
    expect(echoed.body).toBe("");
    expect(echoed.headers).toContainEqual(["Content-Length", "0"]);
  });

  test("http_delete() sends a DELETE, with no Content-Type unless it has a body", async () => {
    worker = await startWorker(db.url);
    const bare = await enqueue(db.sql`select net.http_delete(${fixture.url("/echo")}, '{"k": "v"}') as id`);
    const withBody = await enqueue(db.sql`select net.http_delete(${fixture.url("/echo")}, body => '{"x": 1}') as id`);
    const a = JSON.parse((await responseFor(db.sql, bare)).content!);
    const b = JSON.parse((await responseFor(db.sql, withBody)).content!);
    expect([a.method, a.target, a.body]).toEqual(["DELETE", "/echo?k=v", ""]);
    expect(a.headers.some(([n]: [string]) => n.toLowerCase() === "content-type")).toBe(false);
    expect([b.method, b.body]).toEqual(["DELETE", '{"x": 1}']);
    expect(b.headers).toContainEqual(["Content-Type", "application/x-www-form-urlencoded"]);
  });

  test("redirects are followed and the final response is stored", async () => {
    worker = await startWorker(db.url);
    const to = encodeURIComponent("/status/404");
    const id = await enqueue(db.sql`select net.http_get(${fixture.url(`/redirect/302?to=${to}`)}) as id`);
    const row = await responseFor(db.sql, id);
    expect([row.status_code, row.content, row.error_msg]).toEqual([404, "status 404", null]);
  });

  test("a target listening only on ::1 is reached through localhost", async () => {
    const v6 = await Fixture.start("::1");
    try {
      worker = await startWorker(db.url);
      const id = await enqueue(db.sql`select net.http_get(${`http://localhost:${v6.port}/status/200`}) as id`);
      const row = await responseFor(db.sql, id);
      expect([row.status_code, row.content]).toEqual([200, "status 200"]);
      expect(v6.received("/status/200")).toHaveLength(1);
    } finally {
      await v6.stop();
    }
  });
});

describe("commits", () => {
  test("a claim commits without waiting for the disk; a store, and anything after a claim, waits as configured", async () => {
    // deferred triggers run at commit: each records the synchronous_commit its transaction commits with
    await db.sql.unsafe(`
      create table public.commits (statement text, setting text);
      create function public.record_commit() returns trigger language plpgsql as $$
      begin insert into public.commits values (tg_argv[0], current_setting('synchronous_commit')); return null; end $$;
      create constraint trigger record_claim after insert on net._http_claim deferrable initially deferred
        for each row execute function public.record_commit('claim');
      create constraint trigger record_store after insert on net._http_response deferrable initially deferred
        for each row execute function public.record_commit('store');
    `);
    // one connection, so the store runs where the claim ran; the test cluster's default is off
    const sql = connect({ url: db.url }, { max: 1, connection: { synchronous_commit: "on" } });
    try {
      const id = await enqueue(db.sql`select net.http_get(${fixture.url("/x")}) as id`);
      const queue = new Queue(sql, "test-worker");
      const { claimed } = await queue.claim(10, { batchSize: 10, ttlSeconds: 3600, leaseMs: 60_000 });
      expect(claimed.map((c) => c.request.id)).toEqual([id]);
      expect((await one<{ s: string }>(sql`select current_setting('synchronous_commit') as s`)).s).toBe("on");
      await queue.store([{
        id,
        status_code: 200,
        content_type: null,
        headers: {},
        content: "ok",
        timed_out: false,
        error_msg: null,
        body: null,
      }]);
      expect([...await db.sql`select statement, setting from public.commits order by statement`]).toEqual([
        { statement: "claim", setting: "off" },
        { statement: "store", setting: "on" },
      ]);
      expect((await responseFor(db.sql, id)).content).toBe("ok");
    } finally {
      await sql.end();
      await db.sql.unsafe(`
        drop trigger record_claim on net._http_claim;
        drop trigger record_store on net._http_response;
        drop function public.record_commit();
        drop table public.commits;
      `);
    }
  });
});

describe("--write-delay", () => {
  /**
   * Ten requests answered over 270 ms (/delay/0 … /delay/270) with pgnet's --write-delay at `delay`: the number of
   * statements that stored their responses, counted by a statement-level trigger on net._http_response.
   */
  async function writesForTen(delay: string): Promise<number> {
    await db.sql.unsafe(`
      create table public.writes (n int);
      grant insert on public.writes to pgnet_worker; -- the trigger runs as the role pgnet's statements run as
      create function public.count_write() returns trigger language plpgsql as $$
      begin insert into public.writes values (1); return null; end $$;
      create trigger count_write after insert on net._http_response
        for each statement execute function public.count_write();
    `);
    try {
      worker = await startWorker(db.url, { "write-delay": delay });
      const ids = (await db.sql`
        select net.http_get(${fixture.url("/delay/")} || (g * 30)) as id from generate_series(0, 9) g
      `).map((r) => String(r.id));
      for (const id of ids) expect((await responseFor(db.sql, id)).content).toBe("done");
      return (await one<{ n: number }>(db.sql`select count(*)::int as n from public.writes`)).n;
    } finally {
      await db.sql.unsafe(`
        drop trigger count_write on net._http_response;
        drop function public.count_write();
        drop table public.writes;
      `);
    }
  }

  test("results finishing while others run share one write", async () => {
    // each waits for the others, and the last one ends the wait
    expect(await writesForTen("1s")).toBe(1);
  });

  test("the same answers are written as they come with --write-delay 0", async () => {
    expect(await writesForTen("0")).toBeGreaterThanOrEqual(5);
  });

  test("a result waits no longer than the delay for a slow request, and alone nothing waits", async () => {
    worker = await startWorker(db.url, { "write-delay": "1s" });
    // nothing else running: written at once, long before the delay would end
    const started = performance.now();
    await responseFor(db.sql, await enqueue(db.sql`select net.http_get(${fixture.url("/delay/0")}) as id`));
    expect(performance.now() - started).toBeLessThan(900);
    // beside a request that takes 4 s, the fast one is written once its delay is over
    const [slow, fast] = (await db.sql`
      select net.http_get(${fixture.url("/delay/4000")}) as id union all
      select net.http_get(${fixture.url("/delay/0")})
    `).map((r) => String(r.id));
    await responseFor(db.sql, fast!, 3000);
    expect(await db.sql`select 1 from net._http_response where id = ${slow!}::bigint`).toHaveLength(0);
    expect((await responseFor(db.sql, slow!)).content).toBe("done");
  });
});

describe("sliding window", () => {
  test("a slow endpoint never holds back fast ones: they finish while it is still in flight", async () => {
    // one host, allowed the whole window (by default a host has a quarter of it: tests/delivery.test.ts)
    worker = await startWorker(db.url, { concurrency: "4", "host-concurrency": "4" });
    const slow = await enqueue(
      db.sql`select net.http_get(${fixture.url("/never")}, timeout_milliseconds => 3000) as id`,
    );
    // the slow one is on the wire before any fast one is queued
    await waitFor(
      () => fixture.received("/never").some((r) => header(r, "X-Pgnet-Request-Id")[0] === slow),
      5000,
      "the slow request to be in flight",
    );
    const fast = (await db.sql`select net.http_get(${fixture.url("/status/200")}) as id from generate_series(1, 40)`)
      .map((r) => r.id as string);
    await waitFor(
      async () => {
        const [row] = await db.sql`select count(*)::int as n from net._http_response where id = any(${fast}::bigint[])`;
        return row!.n === 40;
      },
      10_000,
      "the fast responses",
    );
    // the slow request is still running: its response is not stored yet
    const [slowRow] = await db.sql`select count(*)::int as n from net._http_response where id = ${slow}`;
    expect(slowRow!.n).toBe(0);
    expect(worker.status().inFlight).toBe(1);
    expect((await responseFor(db.sql, slow)).timed_out).toBe(true);
  });
});

describe("failures become rows", () => {
  test("a timeout stores pg_net's message with four positive figures", async () => {
    worker = await startWorker(db.url);
    const id = await enqueue(db.sql`select net.http_get(${fixture.url("/never")}, timeout_milliseconds => 300) as id`);
    const row = await responseFor(db.sql, id);
    expect(row.timed_out).toBe(true);
    expect(row.status_code).toBeNull();
    const m =
      /^Timeout of 300 ms reached\. Total time: (\d+\.\d{6}) ms \(DNS time: (\d+\.\d{6}) ms, TCP\/SSL handshake time: (\d+\.\d{6}) ms, HTTP Request\/Response time: (\d+\.\d{6}) ms\)$/
        .exec(row.error_msg!);
    expect(m).not.toBeNull();
    for (const figure of m!.slice(1)) expect(Number(figure)).toBeGreaterThan(0);
  });

  test("transport failures store libcurl's texts", async () => {
    worker = await startWorker(db.url);
    const closed = await Fixture.start();
    const closedUrl = closed.url("/");
    await closed.stop();
    const ids = await one<Record<string, string>>(db.sql`
      select net.http_get(${closedUrl}) as refused,
             net.http_get(${fixture.url("/disconnect")}) as nothing,
             net.http_get(${fixture.url("/weird")}) as weird,
             net.http_get('http://no-such-host.invalid/') as unresolved
    `);
    const messages: Record<string, string | null> = {};
    for (const [name, id] of Object.entries(ids)) messages[name] = (await responseFor(db.sql, id)).error_msg;
    expect(messages).toEqual({
      refused: "Couldn't connect to server",
      nothing: "Server returned nothing (no headers, no data)",
      weird: "Weird server reply",
      unresolved: "Couldn't resolve host name",
    });
  });

  test("a non-http URL inserted directly into the queue stores Unsupported protocol", async () => {
    worker = await startWorker(db.url);
    const id = await enqueue(db.sql`
      insert into net.http_request_queue (method, url, timeout_milliseconds) values ('GET', 'file:///etc/passwd', 1000)
      returning id
    `);
    await db.sql`select net.wake()`;
    const row = await responseFor(db.sql, id);
    expect([row.error_msg, row.timed_out, row.content]).toEqual(["Unsupported protocol", false, null]);
  });
});

describe("waking", () => {
  test("a commit wakes the worker at once; a rolled-back request is never sent", async () => {
    // a poll interval of an hour: only NOTIFY can wake the worker during this test
    worker = await startWorker(db.url, { "poll-interval": "1h" });
    await db.sql.begin(async (tx) => {
      await tx`select net.http_get(${fixture.url("/status/201")})`;
      throw new Error("roll back");
    }).catch(() => {});
    const id = await enqueue(db.sql`select net.http_get(${fixture.url("/status/202")}) as id`);
    expect((await responseFor(db.sql, id)).status_code).toBe(202);
    await worker.idle();
    expect(fixture.received("/status/201")).toHaveLength(0);
    expect((await unanswered(db.sql)).n).toBe(0);
  });

  test("a request committed after later ones were claimed is claimed at once: its wake carries its id", async () => {
    // no poll during the test: only the notifications can send the claims back to a row behind them
    worker = await startWorker(db.url, { "poll-interval": "1h" });
    const late = connect({ url: db.url }, { max: 1 });
    try {
      // the late transaction takes its id first and commits after a later request was claimed and answered
      await late.unsafe("begin");
      const early = await enqueue(late`select net.http_get(${fixture.url("/status/205")}) as id`);
      const later = await enqueue(db.sql`select net.http_get(${fixture.url("/status/206")}) as id`);
      expect((await responseFor(db.sql, later)).status_code).toBe(206);
      await late.unsafe("commit");
      expect((await responseFor(db.sql, early)).status_code).toBe(205);

      // a row inserted directly sends no notification: behind the claims, it waits for them to start over
      await late.unsafe("begin");
      const direct = await enqueue(late`
        insert into net.http_request_queue (method, url, timeout_milliseconds)
        values ('GET', ${fixture.url("/status/207")}, 5000) returning id
      `);
      const after = await enqueue(db.sql`select net.http_get(${fixture.url("/status/208")}) as id`);
      expect((await responseFor(db.sql, after)).status_code).toBe(208);
      await late.unsafe("commit");
      await new Promise((r) => setTimeout(r, 300));
      expect(fixture.received("/status/207")).toHaveLength(0);
      // any notification that is not an id (anyone may send one) sends the next claim to the head
      await db.sql`select pg_notify('pgnet_wake', 'not an id')`;
      expect((await responseFor(db.sql, direct)).status_code).toBe(207);
    } finally {
      await late.end();
    }
  });

  test("rows inserted directly into the queue are processed without a wake", async () => {
    worker = await startWorker(db.url, { "poll-interval": "100ms" });
    const id = await enqueue(db.sql`
      insert into net.http_request_queue (method, url, timeout_milliseconds) values ('GET', ${
      fixture.url("/status/203")
    }, 5000)
      returning id
    `);
    expect((await responseFor(db.sql, id)).status_code).toBe(203);
  });

  test("requests queued while no worker runs are processed when one starts", async () => {
    // the premise: no worker serves this database (none leaked from another test) while the request waits
    const workers = await db.sql`
      select 1 from pg_stat_activity where datname = ${db.name} and application_name like 'pgnet % worker'
    `;
    expect(workers).toHaveLength(0);
    const id = await enqueue(db.sql`select net.http_get(${fixture.url("/status/204")}) as id`);
    expect(fixture.received("/status/204")).toHaveLength(0);
    worker = await startWorker(db.url, { "poll-interval": "1h" });
    const row = await responseFor(db.sql, id);
    expect([row.status_code, row.content]).toEqual([204, null]);
  });
});

describe("collect with a worker", () => {
  test("a request is PENDING until its response is stored, then SUCCESS; async => false waits", async () => {
    worker = await startWorker(db.url);
    const id = await enqueue(db.sql`select net.http_get(${fixture.url("/delay/300")}) as id`);
    const pending = await one(db.sql`select status from net._http_collect_response(${id})`);
    expect(pending.status).toBe("PENDING");
    const done = await one(db.sql`
      select status, message, (response).status_code, (response).body from net._http_collect_response(${id}, async => false)
    `);
    expect(done).toEqual({ status: "SUCCESS", message: "ok", status_code: 200, body: "done" });
  });
});

describe("worker functions", () => {
  async function asRole<T>(role: string | null, fn: (tx: typeof db.sql) => Promise<T>): Promise<T> {
    return await db.sql.begin(async (tx) => {
      if (role) await tx.unsafe(`set local role ${role}`);
      return await fn(tx as unknown as typeof db.sql);
    }) as T;
  }

  test("check_worker_is_up() and wait_until_running() see the worker, for superusers and plain roles", async () => {
    await db.sql`create role pgnet_plain_role login`;
    try {
      worker = await startWorker(db.url);
      for (const role of [null, "pgnet_plain_role"]) {
        const result = await asRole(role, async (tx) => {
          const [up] = await tx`select net.check_worker_is_up()::text as v`;
          await tx`select net.wait_until_running()`;
          const [restart] = await tx`select net.worker_restart() as v`;
          return [up!.v, restart!.v];
        });
        expect(result).toEqual(["", true]);
      }
      await worker.stop({ timeout: 1000 });
      await waitFor(
        async () => {
          const attempt = await db.sql`select net.check_worker_is_up()`.then(() => "up", (e: Error) => e.message);
          return attempt === "the pg_net background worker is not up";
        },
        5000,
        "check_worker_is_up() to notice the stopped worker",
      );
    } finally {
      await db.sql`drop role pgnet_plain_role`;
    }
  });

  test("the worker's connections name pgnet and its version in application_name", async () => {
    worker = await startWorker(db.url);
    const names = (await db.sql`
      select distinct application_name as name from pg_stat_activity
       where datname = ${db.name} and pid <> pg_backend_pid() and application_name like 'pgnet%'
    `).map((r) => r.name).sort();
    expect(names).toContain(`pgnet ${VERSION} worker`);
    expect(names.every((n: string) => n.startsWith(`pgnet ${VERSION}`))).toBe(true);
  });

  test("worker_restart() makes the worker reconnect and re-read its settings", async () => {
    const logger = memoryLogger();
    worker = await startWorker(db.url, {}, logger);
    const [before] = await listenerPids();
    await db.sql`alter role postgres set pg_net.batch_size = 17`;
    try {
      await db.sql`select net.worker_restart()`;
      await waitFor(() => logger.lines.some((l) => l.includes("worker restarted")), 5000, "the restart");
      await newListener(before!);
      expect(worker.settings.batchSize).toBe(17);
      const id = await enqueue(db.sql`select net.http_get(${fixture.url("/status/200")}) as id`);
      expect((await responseFor(db.sql, id)).status_code).toBe(200);
    } finally {
      await db.sql`alter role postgres reset pg_net.batch_size`;
    }
  });
});

describe("worker_restart()", () => {
  test("ALTER SYSTEM SET pg_net.ttl and batch_size, then worker_restart(): read at once, as pg_net does", async () => {
    const logger = memoryLogger();
    worker = await startWorker(db.url, {}, logger);
    const [old] = await db.sql`
      insert into net._http_response (id, status_code, created) values (-1, 200, now() - interval '1 hour')
      returning id
    `;
    expect(old).toBeDefined();
    try {
      // no pg_reload_conf() of ours: worker_restart() reloads the configuration, as pg_net's does. PostgreSQL 14–16
      // take ALTER SYSTEM only for a setting the session knows: SET makes pg_net.* known (17 and later need not)
      const session = await db.sql.reserve();
      try {
        await session`set pg_net.ttl = '1 second'`;
        await session`set pg_net.batch_size = 23`;
        await session`alter system set pg_net.ttl = '1 second'`;
        await session`alter system set pg_net.batch_size = 23`;
        await session`reset all`;
      } finally {
        session.release();
      }
      const restarted = logger.lines.filter((l) => l.includes("worker restarted")).length;
      await db.sql`select net.worker_restart()`;
      await waitFor(
        () => logger.lines.filter((l) => l.includes("worker restarted")).length > restarted,
        5000,
        "the restart",
      );
      expect([worker.settings.ttlSeconds, worker.settings.batchSize]).toEqual([1, 23]);
      expect(worker.status().sources).toMatchObject({ ttlSeconds: "database", batchSize: "database" });
      // the hour-old response is past the new TTL: the next claim deletes it
      await waitFor(
        async () => {
          const [row] = await db.sql`select count(*)::int as n from net._http_response where id = -1`;
          return row!.n === 0;
        },
        5000,
        "the expired response to be deleted",
      );
    } finally {
      await db.sql`alter system reset pg_net.ttl`;
      await db.sql`alter system reset pg_net.batch_size`;
      await db.sql`select pg_reload_conf()`;
    }
  });

  test("requests in flight during a restart carry on: each is delivered once and its response stored", async () => {
    const logger = memoryLogger();
    worker = await startWorker(db.url, {}, logger);
    const [before] = await listenerPids();
    const from = fixture.requests.length;
    const ids = (await db.sql`select net.http_get(${fixture.url("/delay/2000")}) as id from generate_series(1, 5)`)
      .map((r) => r.id as string);
    await waitFor(
      () => deliveries("/delay/2000", ids, from).every((n) => n === 1),
      5000,
      "the requests to be in flight",
    );
    await db.sql`select net.worker_restart()`;
    await waitFor(() => logger.lines.some((l) => l.includes("worker restarted")), 5000, "the restart");
    await newListener(before!);
    // the restart is over while all five are still waiting for their answers
    expect(worker.status().inFlight).toBe(5);
    const [early] = await db.sql`select count(*)::int as n from net._http_response where id = any(${ids}::bigint[])`;
    expect(early!.n).toBe(0);
    await waitFor(
      async () => {
        const [row] = await db.sql`select count(*)::int as n from net._http_response where id = any(${ids}::bigint[])`;
        return row!.n === 5;
      },
      10_000,
      "the five responses",
    );
    const rows = await db.sql`select status_code, content from net._http_response where id = any(${ids}::bigint[])`;
    expect(rows.map((r) => [r.status_code, r.content])).toEqual(Array(5).fill([200, "done"]));
    await worker.idle();
    expect(deliveries("/delay/2000", ids, from)).toEqual([1, 1, 1, 1, 1]);
  });

  test("a rolled-back worker_restart() leaves the worker's session alone; a committed one replaces it", async () => {
    const logger = memoryLogger();
    worker = await startWorker(db.url, {}, logger);
    const [before] = await listenerPids();
    await db.sql.begin(async (tx) => {
      await tx`select net.worker_restart()`;
      throw new Error("roll back");
    }).catch(() => {});
    // a request committed after the rollback is answered: the worker has handled every notification before it
    const id = await enqueue(db.sql`select net.http_get(${fixture.url("/status/200")}) as id`);
    expect((await responseFor(db.sql, id)).status_code).toBe(200);
    await Bun.sleep(500); // nothing to wait for: a restart, had one been asked for, would have begun by now
    expect(logger.lines.filter((l) => l.includes("worker restart"))).toEqual([]);
    expect(await listenerPids()).toEqual([before!]);
    await db.sql`select net.worker_restart()`;
    await waitFor(() => logger.lines.some((l) => l.includes("worker restarted")), 5000, "the restart");
    await newListener(before!);
  });
});

describe("schema net dropped under a running worker", () => {
  /** The worker's "schema net is gone" lines, and the count it gives once writes succeed again. */
  const gone = (lines: string[]) => lines.filter((l) => l.includes("schema net is gone: dropping the results"));
  const dropped = (lines: string[]) =>
    lines.flatMap((l) => /dropped (\d+) results while schema net was gone/.exec(l)?.[1] ?? []).map(Number);

  test("their results are dropped, the worker keeps running, and after install it answers anew", async () => {
    const logger = memoryLogger();
    worker = await startWorker(db.url, { "poll-interval": "100ms" }, logger);
    const from = fixture.requests.length;
    const ids = (await db.sql`select net.http_get(${fixture.url("/delay/1500")}) as id from generate_series(1, 5)`)
      .map((r) => r.id as string);
    await waitFor(
      () => deliveries("/delay/1500", ids, from).every((n) => n === 1),
      5000,
      "the requests to be in flight",
    );
    try {
      await uninstall(db.sql);
      await waitFor(() => gone(logger.lines).length === 1, 10_000, "the results to be dropped");
      await worker.idle();
      expect(worker.status()).toMatchObject({ state: "running", inFlight: 0, pendingWrites: 0 });
      expect(logger.lines.filter((l) => l.includes("schema net is missing or incomplete"))).toHaveLength(1);
    } finally {
      await install(db.sql);
    }
    const id = await enqueue(db.sql`select net.http_get(${fixture.url("/status/207")}) as id`);
    const row = await responseFor(db.sql, id);
    expect([row.status_code, row.content, row.error_msg]).toEqual([207, "status 207", null]);
    // the new schema's ids start again at 1: none of the old results was stored under them
    const stored = await db.sql`select id, status_code from net._http_response`;
    expect(stored.map((r) => ({ ...r }))).toEqual([{ id, status_code: 207 }]);
    expect(deliveries("/delay/1500", ids, from)).toEqual([1, 1, 1, 1, 1]);
  });

  test("the results it drops are reported in one line, however many writes they arrive in, and counted after", async () => {
    const logger = memoryLogger();
    worker = await startWorker(db.url, { "poll-interval": "100ms" }, logger);
    const from = fixture.requests.length;
    const ids = (await db.sql`select net.http_get(${fixture.url("/delay/1500")}) as id from generate_series(1, 5)`)
      .map((r) => r.id as string);
    await waitFor(
      () => deliveries("/delay/1500", ids, from).every((n) => n === 1),
      5000,
      "the requests to be in flight",
    );
    try {
      await uninstall(db.sql);
      await waitFor(() => worker!.status().inFlight === 0, 10_000, "the requests to finish");
      await worker.idle();
      expect(gone(logger.lines)).toHaveLength(1);
    } finally {
      await install(db.sql);
    }
    // the count comes with the first write after the schema is back
    const id = await enqueue(db.sql`select net.http_get(${fixture.url("/status/200")}) as id`);
    await responseFor(db.sql, id);
    await waitFor(() => dropped(logger.lines).length === 1, 5000, "the count of dropped results");
    expect(dropped(logger.lines)).toEqual([5]);
  });

  test("while schema net is gone the worker says so once, however many lease renewals pass", async () => {
    const logger = memoryLogger();
    worker = await startWorker(db.url, { lease: "1s", "poll-interval": "100ms" }, logger);
    try {
      await uninstall(db.sql);
      await Bun.sleep(1500); // four lease renewals: nothing to wait for, the point is that nothing more is said
      expect(logger.lines.filter((l) => l.includes("ERROR"))).toEqual([
        expect.stringContaining("schema net is missing or incomplete"),
      ]);
    } finally {
      await install(db.sql);
    }
  });

  test("after schema net is installed again, worker_restart() still restarts the worker", async () => {
    const logger = memoryLogger();
    worker = await startWorker(db.url, {}, logger);
    await db.sql`select net.worker_restart()`;
    await waitFor(() => logger.lines.some((l) => l.includes("worker restarted")), 5000, "the first restart");
    await uninstall(db.sql);
    await install(db.sql);
    const [before] = await listenerPids();
    await Bun.sleep(1000); // restarts are at least a second apart
    await db.sql`select net.worker_restart()`;
    await newListener(before!);
  });
});

describe("settings from the database", () => {
  test("pg_net.batch_size and pg_net.ttl are read from ALTER ROLE ... SET; flags override them", async () => {
    await db.sql`alter role postgres set pg_net.batch_size = 5`;
    await db.sql`alter role postgres set pg_net.ttl = '2 hours 30 minutes'`;
    try {
      worker = await startWorker(db.url);
      expect(worker.settings.batchSize).toBe(5);
      expect(worker.settings.ttlSeconds).toBe(9000);
      expect(worker.status().sources).toMatchObject({ batchSize: "database", ttlSeconds: "database" });
      await worker.stop();
      worker = await startWorker(db.url, { "batch-size": "7" });
      expect(worker.settings.batchSize).toBe(7);
      expect(worker.status().sources.batchSize).toBe("flag");
    } finally {
      await db.sql`alter role postgres reset pg_net.batch_size`;
      await db.sql`alter role postgres reset pg_net.ttl`;
    }
  });

  test("pg_net.batch_size set with ALTER DATABASE ... SET is read by a worker started afterwards", async () => {
    await db.sql.unsafe(`alter database ${db.name} set pg_net.batch_size = 33`);
    try {
      worker = await startWorker(db.url);
      expect(worker.status().settings.batchSize).toBe(33);
      expect(worker.status().sources.batchSize).toBe("database");
    } finally {
      await db.sql.unsafe(`alter database ${db.name} reset pg_net.batch_size`);
    }
  });

  // PostgreSQL 18 takes ALTER SYSTEM for a prefixed custom setting with no placeholder (PostgreSQL 15 did not)
  test("pg_net.ttl set with ALTER SYSTEM and pg_reload_conf() is read by a worker started afterwards", async () => {
    /** what a session sees once the server has re-read its configuration */
    const ttl = async () => (await db.sql`select current_setting('pg_net.ttl', true) as v`)[0]!.v as string | null;
    await db.sql`alter system set pg_net.ttl = '2 hours'`;
    try {
      await db.sql`select pg_reload_conf()`;
      await waitFor(async () => (await ttl()) === "2 hours", 5000, "the configuration to be reloaded");
      worker = await startWorker(db.url);
      expect(worker.status().settings.ttlSeconds).toBe(7200);
      expect(worker.status().sources.ttlSeconds).toBe("database");
    } finally {
      await db.sql`alter system reset pg_net.ttl`;
      await db.sql`select pg_reload_conf()`;
      await waitFor(async () => !(await ttl()), 5000, "the configuration to be reloaded");
    }
  });

  test("an invalid pg_net.ttl or batch_size is logged with the default used, and the worker keeps working", async () => {
    await db.sql`alter role postgres set pg_net.ttl = 'not an interval'`;
    await db.sql`alter role postgres set pg_net.batch_size = 0`;
    try {
      const logger = memoryLogger();
      worker = await startWorker(db.url, {}, logger);
      expect(worker.settings.ttlSeconds).toBe(6 * 3600);
      expect(worker.settings.batchSize).toBe(200);
      expect(logger.lines.some((l) => l.includes("invalid pg_net.ttl") && l.includes('"not an interval"'))).toBe(true);
      expect(logger.lines.some((l) => l.includes("invalid pg_net.batch_size") && l.includes("default=200"))).toBe(true);
      const id = await enqueue(db.sql`select net.http_get(${fixture.url("/status/200")}) as id`);
      expect((await responseFor(db.sql, id)).status_code).toBe(200);
    } finally {
      await db.sql`alter role postgres reset pg_net.ttl`;
      await db.sql`alter role postgres reset pg_net.batch_size`;
    }
  });
});

describe("TTL", () => {
  test("responses older than the TTL are deleted in batches, also while idle; newer ones stay", async () => {
    await db.sql`
      insert into net._http_response (id, status_code, created)
      select 800000 + n, 200, now() - interval '2 hours' from generate_series(1, 25) n
    `;
    await db.sql`insert into net._http_response (id, status_code, created) values (800100, 200, now())`;
    // every delete statement the worker runs records how many rows it took
    await db.sql.unsafe(`
      create table public.ttl_deletes (n int);
      grant insert on public.ttl_deletes to pgnet_worker;
      create function public.ttl_count() returns trigger language plpgsql as $$
      begin insert into public.ttl_deletes select count(*) from gone; return null; end $$;
      create trigger ttl_count after delete on net._http_response referencing old table as gone
        for each statement execute function public.ttl_count();
    `);
    try {
      worker = await startWorker(db.url, { ttl: "1 hour", "batch-size": "10", "poll-interval": "100ms" });
      await waitFor(
        async () => {
          const [row] = await db
            .sql`select count(*)::int as n from net._http_response where id between 800001 and 800025`;
          return row!.n === 0;
        },
        10_000,
        "expired responses to be deleted",
      );
      const [kept] = await db.sql`select count(*)::int as n from net._http_response where id = 800100`;
      expect(kept!.n).toBe(1);
      // 25 expired rows, at most 10 a statement (batch-size): three statements, 10 + 10 + 5
      const batches = (await db.sql`select n from public.ttl_deletes where n > 0`).map((r) => r.n);
      expect(batches.sort((a, b) => b - a)).toEqual([10, 10, 5]);
    } finally {
      await db.sql.unsafe(`drop trigger ttl_count on net._http_response; drop table public.ttl_deletes;
                          drop function public.ttl_count()`);
    }
  });
});

describe("volume", () => {
  test("10,000 requests queued in one transaction are each answered exactly once", async () => {
    const before = fixture.received("/status/200").length;
    const ids = await one<{ first: string; last: string }>(db.sql`
      select min(id) as first, max(id) as last
        from (select net.http_get(${fixture.url("/status/200")}) as id from generate_series(1, 10000)) q
    `);
    worker = await startWorker(db.url);
    await waitFor(
      async () => {
        return (await unanswered(db.sql)).n === 0;
      },
      60_000,
      "the queue to drain",
    );
    const [stats] = await db.sql`
      select count(*)::int as rows, count(distinct id)::int as ids, count(*) filter (where status_code = 200)::int as ok
        from net._http_response where id between ${ids.first} and ${ids.last}
    `;
    expect(Number(ids.last) - Number(ids.first)).toBe(9999);
    expect(stats).toEqual({ rows: 10000, ids: 10000, ok: 10000 });
    const sent = fixture.received("/status/200").slice(before);
    expect(sent).toHaveLength(10000);
    expect(new Set(sent.map((r) => header(r, "X-Pgnet-Request-Id")[0])).size).toBe(10000);
  }, 120_000);
});
