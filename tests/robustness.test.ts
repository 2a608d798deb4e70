// Nothing poisons the worker: huge responses, a memory budget that holds, poison rows, requests whose worker
// keeps dying, locks held by other sessions, and results the database refuses.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { createStatusApp } from "../src/status.ts";
import { readQueueDepth } from "../src/queue.ts";
import type { Worker } from "../src/worker.ts";
import { cleanEnv, inProcess, PgnetProcess, RUNTIME } from "./helpers/binary.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture, header } from "./helpers/fixture.ts";
import { memoryLogger, responseFor, startWorker, unanswered, waitFor } from "./helpers/worker.ts";

let db: TestDatabase;
let fixture: Fixture;

beforeAll(async () => {
  db = await createDatabase();
  fixture = await Fixture.start();
});
afterAll(async () => {
  await fixture.stop();
  await db.drop();
});

async function ids(query: Promise<unknown>): Promise<string[]> {
  return ((await query) as { id: string }[]).map((r) => r.id);
}

async function rowsFor(list: string[]) {
  return await db.sql<{ id: string; status_code: number | null; error_msg: string | null; size: number | null }[]>`
    select id, status_code, error_msg, octet_length(content) as size
      from net._http_response where id = any(${list}::bigint[]) order by id
  `;
}

async function allStored(list: string[], timeoutMs = 60_000) {
  await waitFor(async () => (await rowsFor(list)).length === list.length, timeoutMs, `${list.length} responses`);
  return await rowsFor(list);
}

/** Peak resident memory of a process in MiB (VmHWM). */
function peakRssMiB(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmHWM:"));
  return Number(line?.match(/\d+/)?.[0] ?? 0) / 1024;
}

describe("large responses", () => {
  inProcess.test("six 60 MB responses committed together, then a small request: all seven get their rows", async () => {
    const worker = await startWorker(db.url);
    try {
      const large = await ids(db.sql`
        select net.http_get(${fixture.url("/huge/60000000")}, timeout_milliseconds => 120000) as id
          from generate_series(1, 6)
      `);
      const [small] = await ids(db.sql`select net.http_get(${fixture.url("/status/200")}) as id`);
      const rows = await allStored([...large, small!], 120_000);
      expect(rows.map((r) => [r.status_code, r.error_msg, r.size])).toEqual([
        ...large.map(() => [200, null, 60_000_000]),
        [200, null, 10],
      ]);
      expect((await unanswered(db.sql)).n).toBe(0);
    } finally {
      await worker.stop({ timeout: 1000 });
    }
  }, 180_000);

  // measured here: the compiled pgnet idles at 50 MiB RSS and reaches 85 MiB once connected; through this budget
  // the 500 responses peaked at 187-192 MiB (the rest is memory freed and not yet collected). With no budget
  // (all 500 in flight at once) the same run peaked at 500-580 MiB. Under Deno (V8 holds more before it collects)
  // the budgeted run peaked at 292 MiB.
  const overheadMiB = RUNTIME === "deno" ? 288 : 192;
  test(
    `once pgnet has seen a host's 1 MiB answers, 500 more stay under --memory-budget plus ${overheadMiB} MiB`,
    async () => {
      const budgetMiB = 64;
      const args = ["--database", db.url, "--status-port", "off", "--memory-budget", `${budgetMiB}MiB`];
      const pgnet = new PgnetProcess([...args, "--max-response-size", "8MiB", "--max-request-size", "8MiB"], {
        env: cleanEnv(),
      });
      try {
        await pgnet.waitForLine(/worker started/);
        const url = fixture.url("/huge/1048576");
        // a request is charged what its host's answers have taken: the first few teach pgnet this host's sizes
        await allStored(await ids(db.sql`select net.http_get(${url}) as id from generate_series(1, 4)`));
        const list = await ids(db.sql`
        select net.http_get(${url}, timeout_milliseconds => 120000) as id from generate_series(1, 500)
      `);
        let peak = 0;
        await waitFor(
          async () => {
            peak = Math.max(peak, peakRssMiB(pgnet.child.pid!));
            return (await rowsFor(list)).length === list.length;
          },
          120_000,
          "500 responses",
        );
        peak = Math.max(peak, peakRssMiB(pgnet.child.pid!));
        const rows = await rowsFor(list);
        expect(rows.every((r) => r.status_code === 200 && r.size === 1_048_576)).toBe(true);
        expect({ peakMiB: Math.round(peak), under: peak < budgetMiB + overheadMiB }).toEqual({
          peakMiB: Math.round(peak),
          under: true,
        });
      } finally {
        expect(await pgnet.stop()).toBe(0);
      }
    },
    180_000,
  );
});

inProcess.describe("poison rows", () => {
  let worker: Worker;
  beforeAll(async () => {
    worker = await startWorker(db.url, { "max-request-size": "8MiB" });
  });
  afterAll(async () => {
    await worker.stop({ timeout: 1000 });
  });

  test(
    "a directly inserted 400 MB body becomes an error row without being read, and the next request succeeds",
    async () => {
      const [big] = await ids(db.sql`
      insert into net.http_request_queue (method, url, body, timeout_milliseconds)
      values ('POST', ${fixture.url("/echo")}, convert_to(repeat('x', 400000000), 'UTF8'), 5000)
      returning id
    `);
      await db.sql`select net.wake()`;
      const row = await responseFor(db.sql, big!, 60_000);
      expect(row.error_msg).toContain("400000");
      expect(row.error_msg).toContain("over pgnet's --max-request-size of 8388608 bytes");
      expect(fixture.received("/echo").some((r) => r.body.length > 1_000_000)).toBe(false);
      const [next] = await ids(db.sql`select net.http_get(${fixture.url("/status/200")}) as id`);
      expect((await responseFor(db.sql, next!)).status_code).toBe(200);
    },
    90_000,
  );

  test("a large body under the limit is read on its own and sent byte for byte", async () => {
    const [id] = await ids(db.sql`
      insert into net.http_request_queue (method, url, headers, body, timeout_milliseconds)
      values ('POST', ${fixture.url("/echo")}, '{"Content-Type": "text/plain"}',
              convert_to(repeat('0123456789', 300000), 'UTF8'), 10000)
      returning id
    `);
    await db.sql`select net.wake()`;
    expect((await responseFor(db.sql, id!, 30_000)).status_code).toBe(200);
    const sent = fixture.requests.find((r) => header(r, "X-Pgnet-Request-Id").includes(id!))!;
    expect(sent.body.length).toBe(3_000_000);
    expect(sent.body.subarray(0, 20).toString()).toBe("01234567890123456789");
  }, 60_000);

  test("a row inserted with the id of a request in flight waits for it, and the worker goes on", async () => {
    const [held] = await ids(db.sql`select net.http_get(${fixture.url("/delay/3000")}) as id`);
    await waitFor(async () =>
      (await db.sql`select 1 from net._http_claim where id = ${held!} and claimed_by is not null`).length
    );
    // the owner may choose ids: this one is in the queue while the worker holds its twin in net._http_claim
    await db.sql`
      insert into net.http_request_queue (id, method, url, timeout_milliseconds)
      values (${held!}, 'GET', ${fixture.url("/echo?twin=1")}, 5000)
    `;
    await db.sql`select net.wake()`;
    const [next] = await ids(db.sql`select net.http_get(${fixture.url("/status/200")}) as id`);
    expect((await responseFor(db.sql, next!)).status_code).toBe(200); // claims go on, while its twin is in flight
    expect(await rowsFor([held!])).toHaveLength(0);
    expect((await responseFor(db.sql, held!)).content).toBe("done");
    // then the twin is sent; its answer finds the id answered and is not stored (one response per id)
    await waitFor(async () => (await unanswered(db.sql, [held!])).n === 0, 10_000, "the twin to be sent");
    expect(fixture.requests.filter((r) => r.target === "/echo?twin=1")).toHaveLength(1);
    const [stored] = await db.sql`select count(*)::int as n, min(content) as content from net._http_response
                                   where id = ${held!}`;
    expect({ ...stored }).toEqual({ n: 1, content: "done" });
  });

  test("a huge URL or header set inserted directly becomes an error row too", async () => {
    const list = await ids(db.sql`
      insert into net.http_request_queue (method, url, headers, timeout_milliseconds)
      values ('GET', ${fixture.url("/echo?")} || repeat('a', 9000000), null, 5000),
             ('GET', ${fixture.url("/echo")}, jsonb_build_object('X-Big', repeat('b', 9000000)), 5000)
      returning id
    `);
    await db.sql`select net.wake()`;
    const rows = await allStored(list);
    for (const row of rows) expect(row.error_msg).toContain("over pgnet's --max-request-size");
  }, 60_000);
});

describe("a request whose worker keeps dying", () => {
  test("after --max-attempts claims without a result it gets an error row instead of being sent again", async () => {
    const args = ["--database", db.url, "--status-port", "off", "--lease", "1s", "--max-attempts", "2"];
    const path = "/delay/600000";
    const before = fixture.received(path).length;
    const [id] = await ids(db.sql`select net.http_get(${fixture.url(path)}, timeout_milliseconds => 0) as id`);
    for (let attempt = 1; attempt <= 2; attempt++) {
      const pgnet = new PgnetProcess(args, { env: cleanEnv() });
      await waitFor(() => fixture.received(path).length === before + attempt, 20_000, `attempt ${attempt} to arrive`);
      pgnet.signal("SIGKILL");
      await pgnet.exited;
    }
    const pgnet = new PgnetProcess(args, { env: cleanEnv() });
    try {
      const row = await responseFor(db.sql, id!, 20_000);
      expect(row.error_msg).toContain("claimed 3 times without a stored result");
      expect(row.error_msg).toContain("--max-attempts of 2");
      expect(fixture.received(path).length).toBe(before + 2);
    } finally {
      expect(await pgnet.stop()).toBe(0);
    }
  }, 90_000);

  inProcess.test("a graceful stop does not count as an attempt", async () => {
    const worker = await startWorker(db.url, { "max-attempts": "1" });
    const [id] = await ids(
      db.sql`select net.http_get(${fixture.url("/delay/30000")}, timeout_milliseconds => 0) as id`,
    );
    await waitFor(async () =>
      (await db.sql`select 1 from net._http_claim where id = ${id!} and claimed_by is not null`).length
    );
    await worker.stop({ timeout: 100 });
    const [row] = await db.sql`select attempts, claimed_by from net._http_claim where id = ${id!}`;
    expect({ ...row }).toEqual({ attempts: 0, claimed_by: null });
    await db.sql`delete from net._http_claim where id = ${id!}`;
  });
});

inProcess.describe("locks held by other sessions", () => {
  test(
    "a table lock held for 20 s: /health says so, nothing is lost, everything is answered once it goes",
    async () => {
      const logger = memoryLogger();
      const worker = await startWorker(db.url, { "lock-timeout": "500ms", "poll-interval": "200ms" }, logger);
      const app = createStatusApp({ worker, database: "test", queueDepth: () => readQueueDepth(db.sql) });
      try {
        const list = await ids(
          db.sql`select net.http_get(${fixture.url("/delay/500")}) as id from generate_series(1, 50)`,
        );
        const holder = db.sql.reserve();
        const session = await holder;
        try {
          await session`begin`;
          await session`lock table net.http_request_queue in access exclusive mode`;
          const blocked = await waitFor(
            async () => {
              const response = await app.request("/health");
              return response.status === 503 ? await response.json() as { reason: string } : null;
            },
            10_000,
            "/health to report the lock",
          );
          expect(blocked.reason).toMatch(/^blocked for \d+ s: cannot (store responses|claim requests).*lock timeout/);
          await Bun.sleep(20_000);
          expect((await app.request("/health")).status).toBe(503);
        } finally {
          await session`rollback`;
          session.release();
        }
        const rows = await allStored(list, 30_000);
        expect(rows.every((r) => r.status_code === 200)).toBe(true);
        await waitFor(async () => (await app.request("/health")).status === 200, 10_000, "/health to recover");
        expect(logger.lines.some((l) => l.includes("statements run again"))).toBe(true);
      } finally {
        await worker.stop({ timeout: 1000 });
      }
    },
    90_000,
  );

  test("a row lock on one claimed request holds back only that result; the others are stored", async () => {
    const worker = await startWorker(db.url, { "lock-timeout": "300ms" });
    try {
      const [slow] = await ids(db.sql`select net.http_get(${fixture.url("/delay/1000")}) as id`);
      await waitFor(async () =>
        (await db.sql`select 1 from net._http_claim where id = ${slow!} and claimed_by is not null`).length
      );
      const holder = await db.sql.reserve();
      try {
        await holder`begin`;
        await holder`select id from net._http_claim where id = ${slow!} for key share`;
        const others = await ids(
          db.sql`select net.http_get(${fixture.url("/delay/1200")}) as id from generate_series(1, 5)`,
        );
        // the locked row's write fails after 300 ms and is retried alone; the other five go through
        const rows = await allStored(others, 20_000);
        expect(rows.every((r) => r.status_code === 200)).toBe(true);
        expect((await rowsFor([slow!])).length).toBe(0);
      } finally {
        await holder`rollback`;
        holder.release();
      }
      expect((await responseFor(db.sql, slow!, 20_000)).status_code).toBe(200);
    } finally {
      await worker.stop({ timeout: 1000 });
    }
  }, 60_000);
});

inProcess.describe("results the database refuses", () => {
  test("a response a constraint refuses becomes an error row saying why; the rest of its batch is stored", async () => {
    await db.sql`alter table net._http_response add constraint no_poison check (content not like '%poison%')`;
    const worker = await startWorker(db.url);
    try {
      // the nine others finish together with the poison one, so they share its write
      const list = await ids(db.sql`
        select net.http_get(${fixture.url("/echo")}, params => jsonb_build_object('delay', 300, 'x', x)) as id
          from unnest(array['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'poison']) x
      `);
      const rows = await allStored(list, 20_000);
      const poison = rows.find((r) => r.id === list[9])!;
      expect(poison.status_code).toBeNull();
      expect(poison.error_msg).toMatch(/^The response could not be stored: .*no_poison.* \(SQLSTATE 23514\)$/);
      expect(rows.filter((r) => r.status_code === 200)).toHaveLength(9);
    } finally {
      await worker.stop({ timeout: 1000 });
      await db.sql`alter table net._http_response drop constraint no_poison`;
    }
  });
});
