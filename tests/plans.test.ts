// The worker's statements keep their generic plans however large the tables grow (src/queue.ts, PLAN_SETTINGS),
// counted by pg_stat_statements on a server of their own; and those plans read by index, not by scanning a table,
// even when they were made while the tables were empty.

import { afterAll, afterEach, beforeAll, beforeEach, expect, test } from "bun:test";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture } from "./helpers/fixture.ts";
import { responseFor, startWorker, waitFor } from "./helpers/worker.ts";

let db: TestDatabase;
let fixture: Fixture;

beforeAll(async () => {
  fixture = await Fixture.start();
});
beforeEach(async () => {
  db = await createDatabase({ server: "tracked" });
  await db.sql`create extension pg_stat_statements`;
});
afterEach(async () => {
  await db.drop();
});
afterAll(async () => {
  await fixture.stop();
});

/** Requests committed one at a time, each once the last was stored. */
async function oneAtATime(n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const [row] = await db.sql<{ id: string }[]>`select net.http_get(${fixture.url(`/echo?n=${i}`)}) as id`;
    expect((await responseFor(db.sql, row!.id)).status_code).toBe(200);
  }
}

interface Counts {
  calls: number;
  plans: number;
  buffers: number;
}

/** pg_stat_statements' totals for the statements of this database whose text matches `pattern`. */
async function counts(pattern: string, except = "-"): Promise<Counts> {
  const [row] = await db.sql<Counts[]>`
    select coalesce(sum(calls), 0)::int as calls, coalesce(sum(plans), 0)::int as plans,
           coalesce(sum(shared_blks_hit + shared_blks_read), 0)::int as buffers
      from pg_stat_statements
     where dbid = (select oid from pg_database where datname = current_database())
       and query like ${pattern} and query not like ${except}
  `;
  return row!;
}

test(
  "with 100,000 responses stored, claims and stores are planned once, not per request, and expire by index",
  async () => {
    // stored responses: 98,000 from the last hour and 2,000 past the default TTL of 6 hours, which the claims expire
    // 200 at a time (ids below the queue's, which start at 1)
    await db.sql`
      insert into net._http_response (id, status_code, content, created, enqueued_by)
      select -g, 200, 'ok', now() - case when g <= 2000 then interval '7 hours' else interval '1 hour' end, current_user
        from generate_series(1, 100000) g
    `;
    await db.sql`analyze net._http_response`;
    await db.sql`select pg_stat_statements_reset()`;
    const worker = await startWorker(db.url);
    try {
      await oneAtATime(40);
    } finally {
      await worker.stop({ timeout: 1000 });
    }
    const claims = await counts("%with expired as%");
    const stores = await counts("%insert into net._http_response%", "%with expired as%");
    // a generic plan is made once for each of the worker's connections (and again after an ANALYZE of a table it
    // reads): here 2 plans for 54 claims and 2 for 40 stores. Before PLAN_SETTINGS PostgreSQL chose custom plans,
    // made for each call: 54 plans for 52 claims, 12 for 40 stores
    expect(claims.calls).toBeGreaterThanOrEqual(40);
    expect(stores.calls).toBeGreaterThanOrEqual(40);
    expect(claims.plans).toBeLessThan(claims.calls / 4);
    expect(stores.plans).toBeLessThan(stores.calls / 4);
    // every expired response is gone, and only those
    const [left] = await db.sql<{ old: number; recent: number }[]>`
      select count(*) filter (where created < now() - interval '6 hours')::int as old,
             count(*) filter (where id < 0 and created >= now() - interval '6 hours')::int as recent
        from net._http_response
    `;
    expect(left).toEqual({ old: 0, recent: 98_000 });
    // the claims found those 2,000 by the created index and deleted them by address, 144 buffers a claim on
    // average; with sequential scans allowed, a join of the table to its oldest rows was planned as a hash join over
    // a scan of its 100,000 rows in each of the ten claims that expire some: 430 buffers a claim
    expect(claims.buffers / claims.calls).toBeLessThan(250);
  },
  60_000,
);

test("plans made on empty tables still read by index once a burst has passed through them", async () => {
  // the worker's first claims plan its statements while the queue and net._http_claim are empty
  const worker = await startWorker(db.url);
  try {
    await db.sql`select net.http_get(${fixture.url("/echo")}) from generate_series(1, 10000)`;
    await waitFor(
      async () => (await db.sql`select count(*)::int as n from net._http_response`)[0]!.n === 10_000,
      30_000,
      "10,000 responses",
    );
    // the 10,000 rows moved through both tables are dead now, their pages kept until VACUUM
    await db.sql`select pg_stat_statements_reset()`;
    await oneAtATime(40);
  } finally {
    await worker.stop({ timeout: 1000 });
  }
  const claims = await counts("%with expired as%");
  expect(claims.calls).toBeGreaterThanOrEqual(40);
  // by index, a claim of one request read 20 buffers on average; with the plans made on the empty tables, which
  // scan them, 234 (and 259 with PostgreSQL choosing the plans: it keeps those same generic ones, cheap when made)
  expect(claims.buffers / claims.calls).toBeLessThan(100);
}, 60_000);
