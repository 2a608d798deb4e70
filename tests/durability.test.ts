// Never lose a request: real pgnet processes, real faults (kill -9, PostgreSQL restarts, terminated
// connections, several workers), and every committed request ends with exactly one response row.

import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { connect } from "../src/db.ts";
import { install, uninstall } from "../src/installer.ts";
import { cleanEnv, inProcess, PgnetProcess } from "./helpers/binary.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture, header, type Received } from "./helpers/fixture.ts";
import { memoryLogger, responseFor, startWorker, unanswered, waitFor } from "./helpers/worker.ts";

let db: TestDatabase;
let fixture: Fixture;
const env = cleanEnv();

beforeAll(async () => {
  db = await createDatabase();
  fixture = await Fixture.start();
});
afterAll(async () => {
  await fixture.stop();
  await db.drop();
});

function pgnet(...args: string[]): PgnetProcess {
  return new PgnetProcess(["--database", db.url, "--status-port", "off", ...args], { env });
}

async function enqueue(path: string, count: number, timeoutMs = 30_000): Promise<string[]> {
  return (await db.sql`
    select net.http_get(${
    fixture.url(path)
  }, timeout_milliseconds => ${timeoutMs}) as id from generate_series(1, ${count})
  `).map((r) => r.id as string);
}

/** Waits until every id has a response and none is queued; returns rows per id (always 1, by the unique index). */
async function drained(ids: string[], timeoutMs = 60_000): Promise<void> {
  await waitFor(
    async () => {
      const [row] = await db.sql`
      select count(*)::int as n from net._http_response where id = any(${ids}::bigint[])
    `;
      return row!.n === ids.length;
    },
    timeoutMs,
    `${ids.length} responses`,
  );
  expect((await unanswered(db.sql, ids)).n).toBe(0);
}

/** How many times the fixture received each request id, among `requests`. */
function deliveries(requests: Received[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of requests) {
    const id = header(r, "X-Pgnet-Request-Id")[0]!;
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

test(
  "kill -9 with 1,000 requests in flight: the next process re-runs exactly those, each id answered once",
  async () => {
    // long enough that none of the first 1,000 is answered before the last of them arrives
    const path = "/delay/8000";
    // one host: it may have the whole window (a quarter by default)
    const first = pgnet("--concurrency", "1000", "--host-concurrency", "100%", "--lease", "2s");
    await first.waitForLine(/worker started/);
    const ids = await enqueue(path, 1200);
    await waitFor(() => fixture.received(path).length >= 1000, 20_000, "1,000 requests in flight");
    first.signal("SIGKILL");
    await first.exited;
    const inFlight = new Set(deliveries(fixture.received(path)).keys());
    expect(inFlight.size).toBe(1000);

    const second = pgnet("--concurrency", "1000", "--host-concurrency", "100%", "--lease", "2s");
    try {
      await drained(ids);
    } finally {
      expect(await second.stop()).toBe(0);
    }
    const rows = await db.sql`select count(*)::int as n, count(*) filter (where status_code = 200)::int as ok
                              from net._http_response where id = any(${ids}::bigint[])`;
    expect(rows[0]).toEqual({ n: 1200, ok: 1200 });
    const counts = deliveries(fixture.received(path));
    const twice = [...counts].filter(([, n]) => n === 2).map(([id]) => id);
    expect(counts.size).toBe(1200);
    expect([...counts.values()].every((n) => n <= 2)).toBe(true);
    expect(new Set(twice)).toEqual(inFlight); // sent twice: exactly the ones in flight at the kill
    expect((await unanswered(db.sql)).n).toBe(0);
  },
  90_000,
);

test("PostgreSQL restarting mid-load and every pgnet connection terminated: 5,000 requests answered once", async () => {
  const path = "/delay/300";
  const worker = pgnet("--poll-interval", "500ms");
  try {
    await worker.waitForLine(/worker started/);
    const ids = await enqueue(path, 5000);
    await waitFor(() => fixture.received(path).length >= 1000, 20_000, "the load to be under way");
    db.pg.stop("fast");
    await Bun.sleep(1000);
    db.pg.start();
    await db.reconnect();
    await waitFor(() => fixture.received(path).length >= 3000, 30_000, "the load to resume");
    // the pool reconnects at its next statement, the LISTEN session after its backoff: wait for that one too
    await waitFor(
      async () => {
        const [row] = await db.sql`
        select count(*)::int as n from pg_stat_activity
         where datname = ${db.name} and application_name like 'pgnet % worker'
      `;
        return row!.n === 1;
      },
      15_000,
      "pgnet's LISTEN session to reconnect",
    );
    // pgnet's sessions only (the test's own are named "test suite"): its LISTEN session at least, and the pool's
    // connections that are open at this moment
    const [terminated] = await db.sql`
      select count(pg_terminate_backend(pid))::int as n,
             count(*) filter (where application_name like 'pgnet % worker')::int as listener
        from pg_stat_activity
       where datname = ${db.name} and application_name like 'pgnet %' and pid <> pg_backend_pid()
    `;
    expect(terminated!.listener).toBe(1);
    await drained(ids, 60_000);
    expect(worker.lines.some((l) => l.includes("reconnected"))).toBe(true);
    // each id arrived exactly once: in-flight requests kept running through both outages and were stored after
    const counts = deliveries(fixture.received(path));
    expect(ids.filter((id) => counts.get(id) !== 1)).toEqual([]);
  } finally {
    expect(await worker.stop()).toBe(0);
  }
}, 120_000);

test("three pgnet processes share 20,000 requests: each sent once, every process did some", async () => {
  const path = "/status/200";
  const before = fixture.received(path).length;
  const workers = [0, 1, 2].map(() => new PgnetProcess(["--database", db.url, "--status-port", "0"], { env }));
  try {
    const urls = await Promise.all(workers.map((w) => w.statusUrl()));
    const ids = await enqueue(path, 20_000);
    await drained(ids, 90_000);
    const counts = deliveries(fixture.received(path).slice(before));
    expect(counts.size).toBe(20_000);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
    const done = await Promise.all(urls.map(async (u) => {
      const status = await (await fetch(`${u}/status`)).json() as { counters: { succeeded: number } };
      return status.counters.succeeded;
    }));
    expect(done.every((n) => n > 0)).toBe(true);
    expect(done.reduce((a, b) => a + b, 0)).toBe(20_000);
  } finally {
    for (const code of await Promise.all(workers.map((w) => w.stop()))) expect(code).toBe(0);
  }
}, 120_000);

test("SIGTERM under load loses nothing: unfinished requests go back to the queue for the next process", async () => {
  const path = "/delay/200";
  const first = pgnet("--shutdown-timeout", "100ms");
  await first.waitForLine(/worker started/);
  const ids = await enqueue(path, 2000);
  await waitFor(() => fixture.received(path).length >= 300, 20_000, "the load to be under way");
  first.signal("SIGTERM");
  expect(await first.exited).toBe(0);
  const left = await unanswered(db.sql);
  expect(left.n).toBeGreaterThan(0);
  expect(left.held).toBe(0); // given back, not waiting for a lease to run out
  const second = pgnet();
  try {
    await drained(ids);
  } finally {
    expect(await second.stop()).toBe(0);
  }
}, 90_000);

inProcess.test("a connection whose first query fails cannot crash pgnet (postgres.js internal type query, #1192)", async () => {
  // statement_timeout = 1ms cancels the first query of every session of this role
  const password = decodeURIComponent(new URL(db.url).password);
  await db.sql.unsafe(
    `create role pgnet_hasty login password '${password}' in role pgnet_worker; alter role pgnet_hasty set statement_timeout = '1ms'`,
  );
  const url = Object.assign(new URL(db.url), { username: "pgnet_hasty" }).toString();
  let unhandled = 0;
  const count = () => unhandled++;
  process.on("unhandledRejection", count);
  try {
    for (let i = 0; i < 10; i++) {
      const sql = connect({ url }, { max: 1 });
      await sql`select pg_sleep(0)`.catch(() => {});
      await sql.end();
    }
    await Bun.sleep(100);
    expect(unhandled).toBe(0);
  } finally {
    process.off("unhandledRejection", count);
    await db.sql.unsafe("drop role pgnet_hasty");
  }
});

inProcess.test("two workers racing at a lease boundary both deliver; the second stores first, and its row is the one kept", async () => {
  // A has one slot, so once its request is in flight it cannot claim the same row again: C must
  const a = await startWorker(db.url, { "poll-interval": "100ms", concurrency: "1" });
  try {
    const path = "/race/3000";
    const [{ id }] = await db.sql`select net.http_get(${fixture.url(path)}) as id` as unknown as [{ id: string }];
    await waitFor(() => deliveries(fixture.received(path)).get(id) === 1, 5000, "A to send it");
    // A's lease runs out mid-request, as when its renewals cannot reach the database
    await db.sql`update net._http_claim set lease_until = now() - interval '1 second' where id = ${id}`;
    const c = await startWorker(db.url, { "poll-interval": "100ms" });
    try {
      // C's delivery is answered at once and stored while A's is still waiting for its answer
      const stored = await responseFor(db.sql, id);
      expect([stored.status_code, stored.content]).toEqual([200, "later"]);
      expect(deliveries(fixture.received(path)).get(id)).toBe(2);
      expect(a.status().inFlight).toBe(1);
      await a.idle(); // A's answer ("first") arrives and its write finds the request already answered
      expect(a.status().counters.succeeded).toBe(1);
      expect(c.status().counters.succeeded).toBe(1);
      const rows = await db.sql`select content from net._http_response where id = ${id}`;
      expect(rows.map((r) => r.content)).toEqual(["later"]);
      expect((await unanswered(db.sql, [id])).n).toBe(0);
    } finally {
      await c.stop({ timeout: 1000 });
    }
  } finally {
    await a.stop({ timeout: 1000 });
  }
});

test("the whole window is in flight at once: 600 slow requests reach the target together, in one process", async () => {
  const proc = pgnet("--concurrency", "600", "--host-concurrency", "100%");
  try {
    await proc.waitForLine(/worker started/);
    const ids =
      (await db.sql`select net.http_get(${
        fixture.url("/delay/5000")
      }, timeout_milliseconds => 30000) as id from generate_series(1, 600)`)
        .map((r) => r.id as string);
    // Bun's fetch would run 256 at a time; node:http is not capped
    await waitFor(() => fixture.received("/delay/5000").length === 600, 10_000, "600 requests at the fixture");
    const [{ n }] = await db.sql`
      select count(*)::int as n from net._http_response where id = any(${ids}::bigint[])
    ` as unknown as [{ n: number }];
    expect(n).toBe(0); // all 600 arrived before the first answer (5 s after it was sent) was stored
    await drained(ids, 10_000);
    expect(readFileSync(`/proc/${proc.child.pid}/task/${proc.child.pid}/children`, "utf8").trim()).toBe("");
  } finally {
    expect(await proc.stop()).toBe(0);
  }
}, 30_000);

inProcess.test("the worker idles with one clear log line while schema net is gone or half there, and resumes after install", async () => {
  const logger = memoryLogger();
  const worker = await startWorker(db.url, { "poll-interval": "100ms" }, logger);
  const missing = () => logger.lines.filter((l) => l.includes("schema net is missing or incomplete")).length;
  try {
    await uninstall(db.sql);
    await Bun.sleep(600);
    expect(missing()).toBe(1);
    await install(db.sql);
    await waitFor(
      () => logger.lines.some((l) => l.includes("schema net is installed again: resuming")),
      5000,
      "resume",
    );
    const [{ id }] = await db.sql`select net.http_get(${fixture.url("/status/200")}) as id` as unknown as [
      { id: string },
    ];
    expect((await responseFor(db.sql, id)).status_code).toBe(200);

    await db.sql`drop table net._http_response`;
    await db.sql`select net.wake()`;
    await Bun.sleep(600);
    expect(missing()).toBe(2);
    expect(worker.status().state).toBe("running");
    await uninstall(db.sql);
    await install(db.sql);
    const [{ id: again }] = await db.sql`select net.http_get(${fixture.url("/status/200")}) as id` as unknown as [
      { id: string },
    ];
    expect((await responseFor(db.sql, again)).status_code).toBe(200);
  } finally {
    await worker.stop({ timeout: 1000 });
  }
});
