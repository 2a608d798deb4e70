// Delivery you can rely on: retries with backoff and Retry-After that wait in the queue (and survive kill -9),
// dead letters and net.retry(), per-host concurrency and rate limits, fairness between hosts. Real PostgreSQL,
// real workers and processes, local fixtures that fail on demand.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { FROM_HEAD } from "../src/cursor.ts";
import { connect, type Sql } from "../src/db.ts";
import { urlHost } from "../src/limits.ts";
import { HOST_PATTERN, Queue, QUEUE_SCAN_ROWS } from "../src/queue.ts";
import { cleanEnv, PgnetProcess } from "./helpers/binary.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture, header, type Received } from "./helpers/fixture.ts";
import { forgetRequests, responseFor, startWorker, unanswered, waitFor } from "./helpers/worker.ts";

let db: TestDatabase;
let fixture: Fixture;
/** a second host: the same kind of fixture on ::1, so per-host limits tell the two apart */
let other: Fixture;
const ROLES = ["pgnet_t_dl_alice", "pgnet_t_dl_bob"] as const;

beforeAll(async () => {
  db = await createDatabase();
  fixture = await Fixture.start("127.0.0.1");
  other = await Fixture.start("::1");
  for (const role of ROLES) {
    await db.sql.unsafe(`drop role if exists ${role}`);
    await db.sql.unsafe(`create role ${role}`);
  }
});
afterAll(async () => {
  await fixture.stop();
  await other.stop();
  await db.drop();
  for (const role of ROLES) await db.sql.unsafe(`drop role if exists ${role}`).catch(() => {});
});

/** Deliveries of one request id, in arrival order. */
function deliveriesOf(id: string, on: Fixture = fixture): Received[] {
  return on.requests.filter((r) => header(r, "X-Pgnet-Request-Id")[0] === id);
}

/** Queues a GET with a retry policy through net.http_request; returns its id. */
async function request(url: string, retry: unknown, sql: Sql = db.sql): Promise<string> {
  const [row] = await sql`
    select net.http_request(${url}, retry => ${retry === null ? null : JSON.stringify(retry)}::text::jsonb)::text as id
  `;
  return row!.id as string;
}

/** Runs `fn` as `role` (SET ROLE inside a transaction). */
function asRole<T>(role: string, fn: (sql: Sql) => Promise<T>): Promise<T> {
  return db.sql.begin(async (tx) => {
    await tx.unsafe(`set local role ${role}`);
    return await fn(tx as unknown as Sql);
  }) as Promise<T>;
}

/** Waits until every id has its response row. */
async function allStored(ids: string[], timeoutMs: number, what: string): Promise<void> {
  await waitFor(
    async () => {
      const [row] = await db.sql`select count(*)::int as n from net._http_response where id = any(${ids}::bigint[])`;
      return row!.n === ids.length;
    },
    timeoutMs,
    what,
  );
}

async function queued(id: string) {
  const [row] = await db.sql`
    select attempts, retried, last_error, claimed_by, not_before > now() as waiting
      from net._http_claim where id = ${id}
  `;
  return row;
}

describe("retries", () => {
  test("503 twice, then 200: one response row, status 200, 3 attempts, each with the same id and its number", async () => {
    const worker = await startWorker(db.url);
    try {
      const id = await request(fixture.url("/flaky/2"), { max_attempts: 5, backoff_ms: 50 });
      const row = await responseFor(db.sql, id);
      expect([row.status_code, row.content]).toEqual([200, "ok after 2 failures"]);
      const [stored] = await db.sql`
        select count(*)::int as n, max(attempts) as attempts, max(last_error) as last_error
          from net._http_response where id = ${id}
      `;
      expect(stored).toEqual({ n: 1, attempts: 3, last_error: "HTTP 503" });
      const sent = deliveriesOf(id);
      expect(sent.map((r) => header(r, "X-Pgnet-Attempt")[0])).toEqual(["1", "2", "3"]);
      expect(await queued(id)).toBeUndefined();
      expect(worker.status().counters).toMatchObject({ retried: 2, succeeded: 1, deadLettered: 0 });
    } finally {
      await worker.stop();
    }
  });

  test("Retry-After: 2 delays the next attempt by at least 2 s, and collect says PENDING meanwhile", async () => {
    const worker = await startWorker(db.url);
    try {
      const id = await request(fixture.url("/flaky/1?status=429&retry_after=2"), { max_attempts: 3, backoff_ms: 10 });
      await waitFor(async () => (await queued(id))?.retried === 1, 5000, "the first attempt to be put back");
      const q = await queued(id);
      expect(q).toMatchObject({ attempts: 1, retried: 1, last_error: "HTTP 429", claimed_by: null, waiting: true });
      const [collected] = await db.sql`select (net._http_collect_response(${id}::bigint)).status::text as status`;
      expect(collected!.status).toBe("PENDING");
      const row = await responseFor(db.sql, id);
      expect(row.status_code).toBe(200);
      const [first, second] = deliveriesOf(id);
      expect(second!.at - first!.at).toBeGreaterThanOrEqual(2000);
    } finally {
      await worker.stop();
    }
  });

  test("a Retry-After longer than the policy's max_retry_after_ms is cut to it; an HTTP date is honoured too", async () => {
    const worker = await startWorker(db.url);
    try {
      const cut = await request(fixture.url("/flaky/1?retry_after=3600"), { max_attempts: 2, max_retry_after_ms: 300 });
      const date = new Date(Date.now() + 2500).toUTCString(); // second precision: 1.5 to 2.5 s from now
      const dated = await request(fixture.url(`/flaky/1?retry_after=${encodeURIComponent(date)}`), { max_attempts: 2 });
      expect((await responseFor(db.sql, cut)).status_code).toBe(200);
      expect((await responseFor(db.sql, dated)).status_code).toBe(200);
      const [a1, a2] = deliveriesOf(cut);
      expect(a2!.at - a1!.at).toBeLessThan(2000);
      const [d1, d2] = deliveriesOf(dated);
      expect(d2!.at - d1!.at).toBeGreaterThanOrEqual(1000);
    } finally {
      await worker.stop();
    }
  });

  test("a 404 is not retried, nor is a destination the egress policy refuses; a refused connection is", async () => {
    const worker = await startWorker(db.url);
    try {
      const policy = { max_attempts: 3, backoff_ms: 10 };
      const notFound = await request(fixture.url("/status/404"), policy);
      const denied = await request("http://169.254.169.254/latest/meta-data/", policy);
      // a port nothing listens on: a connection error, retried until the attempts are used up
      const closed = await Fixture.start();
      const refusedUrl = closed.url("/x");
      await closed.stop();
      const refused = await request(refusedUrl, policy);
      const rows = await Promise.all([notFound, denied, refused].map((id) => responseFor(db.sql, id)));
      expect(rows.map((r) => [r.status_code, (r as unknown as { attempts: number }).attempts])).toEqual([
        [404, 1],
        [null, 1],
        [null, 3],
      ]);
      expect(rows[2]!.error_msg).toBe("Couldn't connect to server");
      expect(deliveriesOf(notFound)).toHaveLength(1);
      const dead = await db.sql`select id::text from net._http_dead_letter where id = any(${[
        notFound,
        denied,
        refused,
      ]})`;
      expect(dead.map((r) => r.id)).toEqual([refused]);
    } finally {
      await worker.stop();
    }
  });

  test("pg_net's functions still send exactly once; --retry-policy makes retrying their default", async () => {
    let worker = await startWorker(db.url);
    try {
      const [row] = await db.sql`select net.http_get(${fixture.url("/flaky/1")})::text as id`;
      const stored = await responseFor(db.sql, row!.id);
      expect(stored.status_code).toBe(503);
      expect(deliveriesOf(row!.id)).toHaveLength(1);
      const [post] = await db.sql`select net.http_post(${fixture.url("/flaky/1")}, '{"a": 1}')::text as id`;
      expect((await responseFor(db.sql, post!.id)).status_code).toBe(503);
      expect(deliveriesOf(post!.id)).toHaveLength(1);
    } finally {
      await worker.stop();
    }
    worker = await startWorker(db.url, { "retry-policy": '{"max_attempts": 2, "backoff_ms": 10}' });
    try {
      const [row] = await db.sql`select net.http_get(${fixture.url("/flaky/1")})::text as id`;
      expect((await responseFor(db.sql, row!.id)).status_code).toBe(200);
      expect(deliveriesOf(row!.id)).toHaveLength(2);
      // a request's own policy wins over the default: max_attempts 1 sends once
      const once = await request(fixture.url("/flaky/1"), { max_attempts: 1 });
      expect((await responseFor(db.sql, once)).status_code).toBe(503);
    } finally {
      await worker.stop();
    }
  });

  test("a bad policy fails in the caller's transaction; one inserted directly becomes the request's error row", async () => {
    const bad: [unknown, string][] = [
      [{ max_attempts: 0 }, "max_attempts must be an integer from 1 to 100"],
      [{ max_attempts: 2.5 }, "max_attempts must be an integer from 1 to 100"],
      [{ retry_on: ["sometimes"] }, "retry_on must be an array of"],
      [{ backof_ms: 10 }, 'unknown retry policy field "backof_ms"'],
      [[1, 2], "a retry policy must be a JSON object"],
    ];
    for (const [policy, message] of bad) {
      const error = await request(fixture.url("/echo"), policy).catch((e) => e);
      expect(String(error?.message)).toContain(message);
    }
    const [built] = await db.sql`select net.retry_policy(6, backoff => '2 minutes') as p`;
    expect(built!.p).toEqual({
      max_attempts: 6,
      backoff_ms: 120000,
      max_backoff_ms: 600000,
      retry_on: ["connection", "timeout", "429", "5xx"],
      max_retry_after_ms: 3600000,
    });
    const worker = await startWorker(db.url);
    try {
      const [row] = await db.sql`
        insert into net.http_request_queue (method, url, headers, timeout_milliseconds, retry)
        values ('GET', ${fixture.url("/echo")}, '{}', 5000, '{"max_attempts": "many"}') returning id::text
      `;
      const stored = await responseFor(db.sql, row!.id);
      expect(stored.error_msg).toBe(
        "Request not sent: invalid retry policy: max_attempts must be an integer from 1 to 100",
      );
      expect(deliveriesOf(row!.id)).toHaveLength(0);
    } finally {
      await worker.stop();
    }
  });

  test("a retry waiting in the queue survives kill -9 of pgnet and is sent by the next process", async () => {
    const env = cleanEnv();
    const args = ["--database", db.url, "--status-port", "off", "--poll-interval", "200ms"];
    const id = await request(fixture.url("/flaky/1?retry_after=2"), { max_attempts: 3 });
    let pgnet = new PgnetProcess(args, { env });
    try {
      await waitFor(async () => (await queued(id))?.retried === 1, 10_000, "the first attempt to be put back");
      pgnet.signal("SIGKILL");
      await pgnet.exited;
      expect(deliveriesOf(id)).toHaveLength(1);
      pgnet = new PgnetProcess(args, { env });
      const row = await responseFor(db.sql, id, 15_000);
      expect(row.status_code).toBe(200);
      expect(deliveriesOf(id).map((r) => header(r, "X-Pgnet-Attempt")[0])).toEqual(["1", "2"]);
    } finally {
      await pgnet.stop();
    }
  });
});

describe("dead letters", () => {
  test("a request that fails every attempt is a dead letter its role sees and replays; another role cannot", async () => {
    const worker = await startWorker(db.url);
    try {
      const policy = { max_attempts: 2, backoff_ms: 10 };
      // it fails twice in all: both attempts of the request, then the replay succeeds
      const url = fixture.url("/flaky/2?status=500&per=url");
      const id = await asRole("pgnet_t_dl_alice", async (sql) => {
        const [row] = await sql`
          select net.http_request(${url}, method => 'PUT', headers => '{"X-Key": "k1"}', body => 'payload',
                                  retry => ${JSON.stringify(policy)}::text::jsonb)::text as id
        `;
        return row!.id as string;
      });
      const stored = await responseFor(db.sql, id);
      expect(stored.status_code).toBe(500);
      const mine = await asRole("pgnet_t_dl_alice", (sql) => sql`select * from net.http_dead_letters`);
      expect(mine).toHaveLength(1);
      expect(mine[0]).toMatchObject({
        id,
        method: "PUT",
        url,
        attempts: 2,
        status_code: 500,
        error_msg: "HTTP 500",
        retry: policy,
      });
      expect(mine[0]!.headers).toMatchObject({ "X-Key": "k1" });
      // bob sees none of it, cannot replay it, cannot discard it
      expect(await asRole("pgnet_t_dl_bob", (sql) => sql`select * from net.http_dead_letters`)).toHaveLength(0);
      expect(await asRole("pgnet_t_dl_bob", (sql) => sql`select * from net._http_dead_letter`)).toHaveLength(0);
      const refused = await asRole("pgnet_t_dl_bob", (sql) => sql`select net.retry(${id}::bigint)`).catch((e) => e);
      expect(String(refused.message)).toBe(`request ${id} is not one of your dead letters`);
      const bulk = await asRole("pgnet_t_dl_bob", (sql) => sql`select * from net.retry(array[${id}]::bigint[])`);
      expect(bulk).toHaveLength(0);
      await asRole("pgnet_t_dl_bob", (sql) => sql`delete from net._http_dead_letter where id = ${id}`);
      // alice replays it: a new request with the same method, headers and body; the fixture now answers 200
      const again = await asRole("pgnet_t_dl_alice", async (sql) => {
        const [row] = await sql`select net.retry(${id}::bigint)::text as id`;
        return row!.id as string;
      });
      expect(again).not.toBe(id);
      const replayed = await responseFor(db.sql, again);
      expect([replayed.status_code, replayed.content]).toEqual([200, "ok after 2 failures"]);
      const [sent] = deliveriesOf(again);
      expect([sent!.method, header(sent!, "X-Key")[0], sent!.body.toString()]).toEqual(["PUT", "k1", "payload"]);
      const [owner] = await db.sql`select enqueued_by from net._http_response where id = ${again}`;
      expect(owner!.enqueued_by).toBe("pgnet_t_dl_alice");
      expect(await asRole("pgnet_t_dl_alice", (sql) => sql`select * from net.http_dead_letters`)).toHaveLength(0);
      expect(worker.status().counters.deadLettered).toBe(1);
    } finally {
      await worker.stop();
    }
  });

  test("net.retry(bigint[]) replays several, pairing each old id with its new one; dead letters expire", async () => {
    const worker = await startWorker(db.url);
    try {
      const ids = [];
      for (let i = 0; i < 3; i++) {
        ids.push(await request(fixture.url(`/status/503?n=${i}`), { max_attempts: 2, backoff_ms: 10 }));
      }
      for (const id of ids) await responseFor(db.sql, id);
      const pairs = await db
        .sql`select request_id::text as old, new_request_id::text as new from net.retry(${ids}::bigint[])`;
      expect(pairs.map((p) => p.old).sort()).toEqual([...ids].sort());
      for (const pair of pairs) {
        await responseFor(db.sql, pair.new);
        // the same request went out again under its new id
        expect(deliveriesOf(pair.new)[0]!.target).toBe(deliveriesOf(pair.old)[0]!.target);
      }
    } finally {
      await worker.stop();
    }
    // the retried ones failed again and are dead letters anew; a worker with a short TTL deletes them
    await db.sql`update net._http_dead_letter set failed_at = now() - interval '2 days'`;
    const short = await startWorker(db.url, { "dead-letter-ttl": "1 day", lease: "3s" });
    try {
      await waitFor(
        async () => {
          const [row] = await db.sql`select count(*)::int as n from net._http_dead_letter`;
          return row!.n === 0;
        },
        10_000,
        "dead letters past their TTL to be deleted",
      );
    } finally {
      await short.stop();
    }
  });
});

describe("per-host limits", () => {
  test("claims find the same host in a URL as the worker does", async () => {
    const urls = [
      "https://API.Example.com:8443/x?y#z",
      "http://user:pw@host.test/",
      "http://[::1]:8080/",
      "http://127.0.0.1",
      "http://h.test?q=http://other/",
      "http://h.test#@evil.test",
      "no host here",
    ];
    const rows = await db.sql`
      select coalesce(lower(substring(u from ${HOST_PATTERN}::text)), '') as host from unnest(${urls}::text[]) with ordinality t(u, n)
       order by n
    `;
    expect(rows.map((r) => r.host)).toEqual(urls.map(urlHost));
  });

  test("50 requests to a slow host and 50 to a fast one: the fast ones are all done before the first slow one ends", async () => {
    // a window of 40: each host may hold 10 of it (25%)
    const worker = await startWorker(db.url, { concurrency: "40" });
    try {
      const [slow] = await db.sql`
        select array_agg(net.http_get(${fixture.url("/delay/3000")}, timeout_milliseconds => 20000)::text) as ids
          from generate_series(1, 50)
      `;
      const [fast] = await db.sql`
        select array_agg(net.http_get(${other.url("/echo")})::text) as ids from generate_series(1, 50)
      `;
      const started = Date.now();
      await allStored(fast!.ids, 10_000, "the fast host's 50 responses");
      const [slowDone] = await db.sql`
        select count(*)::int as n from net._http_response where id = any(${slow!.ids}::bigint[])
      `;
      expect(slowDone!.n).toBe(0);
      expect(Date.now() - started).toBeLessThan(3000);
      // the slow host never had more than its share in flight
      expect(worker.status().inFlight).toBeLessThanOrEqual(10);
      expect(worker.status().waitingForHost).toBeGreaterThan(0);
    } finally {
      await worker.stop({ timeout: 100 });
    }
    await forgetRequests(db.sql);
  });

  test("fairness: a 10 s host whose requests were queued first and outnumber the window does not delay a fast host", async () => {
    const worker = await startWorker(db.url, { concurrency: "20", "batch-size": "50" });
    try {
      const [slow] = await db.sql`
        select array_agg(net.http_get(${fixture.url("/delay/10000")}, timeout_milliseconds => 30000)::text) as ids
          from generate_series(1, 200)
      `;
      await waitFor(() => fixture.received("/delay/10000").length === 5, 5000, "the slow host's share to be in flight");
      const [fast] = await db.sql`
        select array_agg(net.http_get(${other.url("/echo")})::text) as ids from generate_series(1, 100)
      `;
      const started = Date.now();
      await allStored(fast!.ids, 9000, "the fast host's 100 responses");
      expect(Date.now() - started).toBeLessThan(5000);
      // the slow host got its quarter of the window, no more, and the rest of its requests stayed queued
      expect(fixture.received("/delay/10000")).toHaveLength(5);
      const waiting = await unanswered(db.sql, slow!.ids);
      expect(waiting.n - waiting.held).toBeGreaterThan(100);
    } finally {
      await worker.stop({ timeout: 100 });
    }
    await forgetRequests(db.sql);
  });

  test("a claim past a full host reads at most QUEUE_SCAN_ROWS queued rows, and the next reads on from there", async () => {
    // the full host's requests first, then three for another host, inserted directly (ids in this order)
    const queue = async (url: string, n: number) =>
      (await db.sql`
        insert into net.http_request_queue (method, url, headers, timeout_milliseconds)
        select 'GET', ${url}, '{}', 5000 from generate_series(1, ${n}) returning id::text
      `).map((r) => r.id as string);
    const full = await queue(fixture.url("/echo"), QUEUE_SCAN_ROWS + 10);
    const others = await queue(other.url("/echo"), 3);
    const claims = new Queue(db.sql, "test-pass-over");
    const settings = { batchSize: 10, ttlSeconds: 3600, leaseMs: 60_000 };
    const hosts = [urlHost(fixture.url("/"))];
    try {
      const first = await claims.claim(10, settings, { ...FROM_HEAD, hosts });
      expect(first.claimed).toEqual([]);
      expect(first.read).toEqual({ rows: QUEUE_SCAN_ROWS, after: full[QUEUE_SCAN_ROWS - 1]! });
      // fewer than asked for: it stops at the limit, and cannot say all it read was passed over
      const some = await claims.claim(2, settings, { hosts, after: first.read.after! });
      expect(some.claimed.map((c) => c.request.id)).toEqual(others.slice(0, 2));
      expect(some.read).toEqual({ rows: 13, after: null });
      const rest = await claims.claim(10, settings, { hosts, after: first.read.after! });
      expect(rest.claimed.map((c) => c.request.id)).toEqual(others.slice(2));
      expect(rest.read).toEqual({ rows: 11, after: others[2]! });
      const end = await claims.claim(10, settings, { hosts, after: rest.read.after! });
      expect(end).toMatchObject({ claimed: [], read: { rows: 0, after: null } });
      // a claim of any host takes the full host's requests, in order, from the head or from where the last stopped
      const head = await claims.claim(5, settings);
      expect(head.claimed.map((c) => c.request.id)).toEqual(full.slice(0, 5));
      expect(head.read).toEqual({ rows: 5, after: full[4]! });
      const next = await claims.claim(5, settings, { hosts: [], after: head.read.after! });
      expect(next.claimed.map((c) => c.request.id)).toEqual(full.slice(5, 10));
      const [left] = await db.sql`select count(*)::int as n, min(id)::text as first from net.http_request_queue`;
      expect(left).toEqual({ n: full.length - 10, first: full[10]! });
    } finally {
      await forgetRequests(db.sql);
    }
  });

  test("a fast host's requests queued behind 25,000 of a full host's are found at once, not at the next poll", async () => {
    // both inserted directly, which sends no NOTIFY: the worker's first claims find them, or its poll a minute later
    const insert = (url: string, n: number) =>
      db.sql`
        insert into net.http_request_queue (method, url, headers, timeout_milliseconds)
        select 'GET', ${url}, '{}', 30000 from generate_series(1, ${n}) returning id::text
      `;
    await insert(fixture.url("/delay/20000"), 25_000);
    const fast = (await insert(other.url("/echo"), 20)).map((r) => r.id as string);
    const worker = await startWorker(db.url, { concurrency: "8", "poll-interval": "60s" });
    try {
      // claims past the full host read 10,000 rows each: the third reaches the fast host's
      await allStored(fast, 5000, "the fast host's 20 responses");
      expect(fixture.received("/delay/20000")).toHaveLength(2);
    } finally {
      await worker.stop({ timeout: 100 });
      await forgetRequests(db.sql);
    }
  });

  test("a row inserted directly and committed after claims read past its id is claimed when they start over", async () => {
    // polls every 250 ms: claims start reading from the queue's head again after 12 of them (src/cursor.ts)
    const worker = await startWorker(db.url, { concurrency: "8", "poll-interval": "250ms" });
    const late = connect({ url: db.url }, { max: 1 });
    try {
      // its id is taken now, below the full host's; the row is seen only at commit, which sends no notification
      let commit!: () => void;
      const committed = new Promise<void>((resolve) => (commit = resolve));
      let id = "";
      const transaction = late.begin(async (tx) => {
        id = (await tx`
          insert into net.http_request_queue (method, url, headers, timeout_milliseconds)
          values ('GET', ${other.url("/echo")}, '{}', 5000) returning id::text
        `)[0]!.id as string;
        await committed;
      });
      await waitFor(() => id !== "", 5000, "the late request's id");
      await db.sql`
        select net.http_get(${fixture.url("/delay/19000")}, timeout_milliseconds => 30000) from generate_series(1, 50)
      `;
      await waitFor(() => fixture.received("/delay/19000").length === 2, 5000, "the full host's share in flight");
      await waitFor(() => worker.status().waitingForHost > 0, 5000, "requests waiting for the full host");
      await new Promise((r) => setTimeout(r, 300)); // the claims past the full host have read its 50 rows
      commit();
      await transaction;
      await allStored([id], 8000, "the late request's response");
      expect(fixture.received("/delay/19000")).toHaveLength(2);
    } finally {
      await late.end();
      await worker.stop({ timeout: 100 });
      await forgetRequests(db.sql);
    }
  });

  test("a rate limit of 20/s over 100 requests takes about 5 s and never exceeds 20 in any second", async () => {
    const worker = await startWorker(db.url, { "host-limits": "127.0.0.1=rate:20" });
    try {
      const path = "/echo";
      const before = fixture.received(path).length;
      const [row] = await db.sql`
        select array_agg(net.http_get(${fixture.url(path)})::text) as ids from generate_series(1, 100)
      `;
      // meanwhile a host without a limit is not held up
      const [free] = await db.sql`select net.http_get(${other.url("/echo")})::text as id`;
      const quick = await responseFor(db.sql, free!.id, 1000);
      expect(quick.status_code).toBe(200);
      await allStored(row!.ids, 15_000, "100 rate-limited responses");
      const times = fixture.received(path).slice(before).map((r) => r.at);
      expect(times).toHaveLength(100);
      const span = times.at(-1)! - times[0]!;
      expect(span).toBeGreaterThanOrEqual(4500);
      expect(span).toBeLessThan(7000);
      // any 21 consecutive arrivals span at least a second: no second holds more than 20
      for (let i = 20; i < times.length; i++) expect(times[i]! - times[i - 20]!).toBeGreaterThanOrEqual(1000);
    } finally {
      await worker.stop();
    }
  }, 20_000);

  test("limits are reloadable: raising a rate limit takes effect on reload", async () => {
    const env: Record<string, string> = { PGNET_HOST_LIMITS: "127.0.0.1=rate:2" };
    const { Worker } = await import("../src/worker.ts");
    const { createLogger } = await import("../src/log.ts");
    const worker = new Worker({
      target: { url: db.url },
      logger: createLogger({ level: "error", format: "text", write: () => {} }),
      env,
      flags: { "poll-interval": "200ms" },
    });
    await worker.start();
    try {
      expect(worker.settings.hostRules).toEqual([{ pattern: "127.0.0.1", rate: 2 }]);
      env.PGNET_HOST_LIMITS = "127.0.0.1=rate:1000";
      await worker.reload();
      const [row] = await db.sql`
        select array_agg(net.http_get(${fixture.url("/echo")})::text) as ids from generate_series(1, 40)
      `;
      const started = Date.now();
      await allStored(row!.ids, 10_000, "40 responses");
      // at 2 per second these would take 20 s
      expect(Date.now() - started).toBeLessThan(3000);
    } finally {
      await worker.stop();
    }
  });
});
