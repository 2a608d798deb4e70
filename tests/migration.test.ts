// README "Coming from pg_net": its SQL blocks, run as written, move a database from the pg_net extension (its real
// tables, in a real extension: tests/helpers/extension.ts) to pgnet and back, keeping queued requests, stored
// responses and the ids.

import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { install, uninstall } from "../src/installer.ts";
import { ROOT } from "./helpers/binary.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { fakePgNet, PG_NET_OBJECTS } from "./helpers/extension.ts";
import { Fixture, header } from "./helpers/fixture.ts";
import { responseFor, startWorker, waitFor } from "./helpers/worker.ts";

let db: TestDatabase;
let fixture: Fixture;

beforeAll(async () => {
  db = await createDatabase({ installed: false });
  fixture = await Fixture.start();
});
afterAll(async () => {
  await fixture.stop();
  await db.drop();
});

/** The ```sql blocks of README's "Coming from pg_net" section, in order. */
function readmeBlocks(): string[] {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("## Coming from pg_net"));
  const body = section.slice(0, section.indexOf("\n## ", 1));
  return [...body.matchAll(/```sql\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

test("README's SQL moves pg_net's queue and responses to pgnet and back, ids and all", async () => {
  const blocks = readmeBlocks();
  expect(blocks).toHaveLength(4);
  const extension = await fakePgNet(db.sql, PG_NET_OBJECTS);
  let waiting = "";
  try {
    // pg_net's state: a response from earlier, and two requests its worker has not sent yet
    await extension.create(db.sql);
    await db.sql`
      insert into net._http_response (id, status_code, content, timed_out, created)
      values (nextval('net.http_request_queue_id_seq'), 200, 'earlier', false, now() - interval '1 minute')
    `;
    const queued = await db.sql`
      insert into net.http_request_queue (method, url, headers, body, timeout_milliseconds)
      values ('GET', ${fixture.url("/echo?a=1")}, '{"X-Kept": "1"}', null, 5000),
             ('POST', ${fixture.url("/echo")}, '{"Content-Type": "application/json"}', '{"b":2}'::bytea, 5000)
      returning id::text
    `;
    const ids = queued.map((r) => r.id as string);

    await db.sql.unsafe(blocks[0]!);
    await install(db.sql);
    await db.sql.unsafe(blocks[1]!);

    const worker = await startWorker(db.url);
    try {
      for (const id of ids) expect((await responseFor(db.sql, id)).status_code).toBe(200);
      const sent = fixture.requests.filter((r) => ids.includes(header(r, "X-Pgnet-Request-Id")[0]!));
      expect(sent.map((r) => [r.method, r.target])).toEqual([["GET", "/echo?a=1"], ["POST", "/echo"]]);
      expect(header(sent[0]!, "X-Kept")).toEqual(["1"]);
      expect(sent[1]!.body.toString()).toBe('{"b":2}');
      const [earlier] = await db.sql`select content from net._http_response where id = 1`;
      expect(earlier!.content).toBe("earlier");
      // new ids continue after the largest moved one
      const [next] = await db.sql`select net.http_get(${fixture.url("/echo")})::text as id`;
      expect(Number(next!.id)).toBe(Number(ids[1]) + 1);
      await responseFor(db.sql, next!.id);
      // one answered 503 with Retry-After: an hour: it waits in net._http_claim, not in the queue
      const [retry] = await db.sql`
        select net.http_request(${
        fixture.url("/flaky/5?retry_after=3600")
      }, 'GET', retry => '{"max_attempts": 3}')::text
          as id
      `;
      waiting = retry!.id;
      await waitFor(
        async () => (await db.sql`select 1 from net._http_claim where id = ${waiting} and not_before > now()`).length,
        10_000,
        "the retry to wait",
      );
    } finally {
      await worker.stop();
    }

    // and back: one GET still queued goes along, and so does the one waiting for a retry; a PUT, which pg_net cannot
    // send, stays behind
    const [get] = await db.sql`select net.http_get(${fixture.url("/echo?back=1")})::text as id`;
    await db.sql`select net.http_put(${fixture.url("/echo")}, '{}')`;
    await db.sql.unsafe(blocks[2]!);
    await uninstall(db.sql);
    await extension.create(db.sql);
    await db.sql.unsafe(blocks[3]!);
    const back = await db.sql`select id::text, method::text, url from net.http_request_queue order by id`;
    expect([...back]).toEqual([
      { id: waiting, method: "GET", url: fixture.url("/flaky/5?retry_after=3600") },
      { id: get!.id, method: "GET", url: fixture.url("/echo?back=1") },
    ]);
    const responses = await db.sql`select id::int, content from net._http_response order by id`;
    expect(responses.map((r) => r.id)).toEqual([1, ...ids.map(Number), Number(ids[1]) + 1]);
    expect(responses[0]!.content).toBe("earlier");
    const [after] = await db.sql`select nextval('net.http_request_queue_id_seq')::text as id`;
    expect(Number(after!.id)).toBeGreaterThan(Number(get!.id));
  } finally {
    await db.sql`drop extension if exists pg_net cascade`;
    extension.remove();
  }
});
