// The worker end to end: SQL calls in, HTTP to a local fixture, rows in net._http_response.

import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture, header } from "./helpers/fixture.ts";
import { memoryLogger, responseFor, startWorker, waitFor } from "./helpers/worker.ts";
import { VERSION } from "../src/version.ts";
import type { Worker } from "../src/worker.ts";

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

describe("sliding window", () => {
  test("a slow endpoint never holds back fast ones: they finish while it is still in flight", async () => {
    worker = await startWorker(db.url, { concurrency: "4" });
    const slow = await enqueue(
      db.sql`select net.http_get(${fixture.url("/never")}, timeout_milliseconds => 3000) as id`,
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
    const [left] = await db.sql`select count(*)::int as n from net.http_request_queue`;
    expect(left!.n).toBe(0);
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
    const id = await enqueue(db.sql`select net.http_get(${fixture.url("/status/204")}) as id`);
    await Bun.sleep(100);
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
    const pids = async () =>
      (await db.sql`
      select pid from pg_stat_activity where datname = ${db.name} and application_name like 'pgnet % worker'
    `).map((r) => r.pid);
    const [before] = await pids();
    await db.sql`alter role postgres set pg_net.batch_size = 17`;
    try {
      await db.sql`select net.worker_restart()`;
      await waitFor(() => logger.lines.some((l) => l.includes("worker restarted")), 5000, "the restart");
      let seen: unknown[] = [];
      const after = await waitFor(
        async () => {
          const now = await pids();
          seen = now;
          return now.length === 1 && now[0] !== before ? now : null;
        },
        5000,
        "a new listener session",
      ).catch((e) => {
        throw new Error(`${e.message}: before=${before} now=${seen}`);
      });
      expect(after).toHaveLength(1);
      expect(worker.settings.batchSize).toBe(17);
      const id = await enqueue(db.sql`select net.http_get(${fixture.url("/status/200")}) as id`);
      expect((await responseFor(db.sql, id)).status_code).toBe(200);
    } finally {
      await db.sql`alter role postgres reset pg_net.batch_size`;
    }
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
        const [row] = await db.sql`select count(*)::int as n from net.http_request_queue`;
        return row!.n === 0;
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
