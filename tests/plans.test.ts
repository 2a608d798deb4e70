// The worker's statements keep their generic plans however large the tables grow (src/queue.ts, PLAN_SETTINGS),
// counted by pg_stat_statements on a server of their own; and those plans read by id, not by scanning a table.

import { afterAll, beforeAll, expect, test } from "bun:test";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture } from "./helpers/fixture.ts";
import { responseFor, startWorker } from "./helpers/worker.ts";

let db: TestDatabase;
let fixture: Fixture;

beforeAll(async () => {
  db = await createDatabase({ server: "tracked" });
  await db.sql`create extension pg_stat_statements`;
  fixture = await Fixture.start();
});
afterAll(async () => {
  await fixture.stop();
  await db.drop();
});

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
      for (let i = 0; i < 40; i++) {
        const [row] = await db.sql<{ id: string }[]>`select net.http_get(${fixture.url(`/echo?n=${i}`)}) as id`;
        expect((await responseFor(db.sql, row!.id)).status_code).toBe(200);
      }
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
    // average; joined to them instead, the generic plan is a hash join over a scan of the table's 100,000 rows in
    // each of the ten claims that expire some: 430 buffers a claim
    expect(claims.buffers / claims.calls).toBeLessThan(250);
  },
  60_000,
);
