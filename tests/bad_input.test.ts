// Bad input and hostile targets: each gets a clear error on its own request, and the next request succeeds.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Worker } from "../src/worker.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture } from "./helpers/fixture.ts";
import { memoryLogger, responseFor, startWorker, type StoredResponse } from "./helpers/worker.ts";

let db: TestDatabase;
let fixture: Fixture;
let worker: Worker;
const logger = memoryLogger();

beforeAll(async () => {
  db = await createDatabase();
  fixture = await Fixture.start();
  // a 1 MiB response cap keeps the oversized-body case quick; the default (64 MiB) is tested in http.test.ts
  worker = await startWorker(db.url, { "max-response-size": "1MiB", "poll-interval": "100ms" }, logger);
});
afterAll(async () => {
  await worker.stop({ timeout: 1000 });
  await fixture.stop();
  await db.drop();
});

/** Inserts a row straight into the queue, as a user or another tool might, bypassing the SQL functions. */
async function direct(
  row: { method?: string; url: string; headers?: string | null; body?: Buffer | null; timeout?: number },
): Promise<string> {
  const [r] = await db.sql`
    insert into net.http_request_queue (method, url, headers, body, timeout_milliseconds)
    values (${row.method ?? "GET"}, ${row.url}, ${row.headers ?? null}::text::jsonb, ${row.body ?? null}, ${
    row.timeout ?? 5000
  })
    returning id
  `;
  await db.sql`select net.wake()`;
  return r!.id;
}

/** The bad request's row, after checking that a normal request queued right after it succeeds. */
async function thenNormal(badId: string): Promise<StoredResponse> {
  const [{ id }] = await db.sql`select net.http_get(${fixture.url("/status/200")}) as id` as unknown as [
    { id: string },
  ];
  const normal = await responseFor(db.sql, id);
  expect([normal.status_code, normal.error_msg]).toEqual([200, null]);
  return await responseFor(db.sql, badId);
}

function failed(row: StoredResponse, message: string | RegExp, timedOut = false): void {
  expect(row.status_code).toBeNull();
  expect(row.timed_out).toBe(timedOut);
  if (typeof message === "string") expect(row.error_msg).toBe(message);
  else expect(row.error_msg).toMatch(message);
}

describe("request side", () => {
  test("headers that are not a JSON object (inserted directly) become an error on that request", async () => {
    failed(
      await thenNormal(await direct({ url: fixture.url("/echo"), headers: "[1, 2]" })),
      "headers must be a JSON object, got [1,2]",
    );
  });

  test("a header value that is an object becomes an error naming the header", async () => {
    const row = await thenNormal(await direct({ url: fixture.url("/echo"), headers: '{"X-A": {"b": 1}}' }));
    failed(row, 'Invalid value for header "X-A": expected a string, number or boolean, got {"b":1}');
  });

  test("a header with CR or LF is refused, not injected", async () => {
    const [{ id }] = await db.sql`
      select net.http_get(${fixture.url("/echo")}, headers => ${
      JSON.stringify({ "X-A": "v\r\nX-Injected: 1" })
    }::text::jsonb) as id
    ` as unknown as [{ id: string }];
    failed(await thenNormal(id), 'Invalid value for header "X-A": CR, LF and NUL are not allowed');
    expect(fixture.requests.some((r) => r.headers.some(([n]) => n === "X-Injected"))).toBe(false);
  });

  test("a header name with a space is refused", async () => {
    failed(
      await thenNormal(await direct({ url: fixture.url("/echo"), headers: '{"Bad Name": "x"}' })),
      'Invalid header name "Bad Name"',
    );
  });

  test("a URL with an empty host, inserted directly, becomes an error", async () => {
    failed(await thenNormal(await direct({ url: "http://" })), "URL using bad/illegal format or missing URL");
  });

  test("a URL the SQL functions would reject, inserted directly, becomes an error", async () => {
    failed(await thenNormal(await direct({ url: "http://a b/" })), "URL using bad/illegal format or missing URL");
    failed(await thenNormal(await direct({ url: "gopher://localhost/" })), "Unsupported protocol");
  });

  test("a 10 MB request body is sent whole", async () => {
    const body = Buffer.alloc(10 * 1024 * 1024, "z");
    const id = await direct({ method: "POST", url: fixture.url("/status/200"), body });
    const row = await thenNormal(id);
    expect(row.status_code).toBe(200);
    const received = fixture.requests.find((r) => r.headers.some(([n, v]) => n === "X-Pgnet-Request-Id" && v === id));
    expect(received!.body.length).toBe(body.length);
  });

  test("a timeout of 0 or a negative one means no timeout; a huge one is accepted", async () => {
    for (const timeout of [0, -1, 2147483647]) {
      const row = await thenNormal(await direct({ url: fixture.url("/delay/300"), timeout }));
      expect([row.status_code, row.content, row.timed_out]).toEqual([200, "done", false]);
    }
  });
});

describe("response side", () => {
  test("a server that never answers times out", async () => {
    failed(
      await thenNormal(await direct({ url: fixture.url("/never"), timeout: 300 })),
      /^Timeout of 300 ms reached/,
      true,
    );
  });

  test("a body trickling in byte by byte times out", async () => {
    failed(
      await thenNormal(await direct({ url: fixture.url("/trickle"), timeout: 500 })),
      /^Timeout of 500 ms reached/,
      true,
    );
  });

  test("a connection closed mid-body is a partial transfer", async () => {
    failed(await thenNormal(await direct({ url: fixture.url("/partial") })), "Transferred a partial file");
  });

  test("a connection reset mid-body is an error", async () => {
    failed(
      await thenNormal(await direct({ url: fixture.url("/reset") })),
      /^(Transferred a partial file|Failure when receiving data from the peer)$/,
    );
  });

  test("a body over the size cap (100 MB here) is an error, not a crash", async () => {
    const row = await thenNormal(await direct({ url: fixture.url("/huge/104857600"), timeout: 30_000 }));
    failed(row, "Maximum file size exceeded: the response body is over 1048576 bytes");
  });

  test("invalid UTF-8, NUL bytes and binary bodies are stored as valid text", async () => {
    const invalid = await thenNormal(await direct({ url: fixture.url("/bytes?hex=636166e9206f6b&type=text/plain") }));
    expect(invalid.content).toBe("caf\uFFFD ok");
    const nul = await thenNormal(await direct({ url: fixture.url("/bytes?hex=6162006364") }));
    expect(nul.content).toBe("ab");
    const binary = await thenNormal(await direct({ url: fixture.url("/bytes?hex=89504e470d0a1a0a") }));
    expect([binary.status_code, binary.content]).toEqual([200, "\uFFFDPNG\r\n\u001a\n"]);
  });

  test("an endless redirect loop stops at 30 redirects", async () => {
    failed(await thenNormal(await direct({ url: fixture.url("/loop") })), "Number of redirects hit maximum amount");
  });

  test("a redirect to another scheme is refused", async () => {
    const to = encodeURIComponent("ftp://127.0.0.1/file");
    failed(await thenNormal(await direct({ url: fixture.url(`/redirect/302?to=${to}`) })), "Unsupported protocol");
  });
});

describe("settings", () => {
  test.each([["0"], ["-5"], ["lots"]])("pg_net.batch_size = %p is logged with the default used", async (value) => {
    await db.sql.unsafe(`alter role postgres set pg_net.batch_size = '${value}'`);
    try {
      await worker.reload();
      expect(worker.settings.batchSize).toBe(200);
      expect(logger.lines.some((l) => l.includes("invalid pg_net.batch_size") && l.includes(`value=${value}`))).toBe(
        true,
      );
      const [{ id }] = await db.sql`select net.http_get(${fixture.url("/status/200")}) as id` as unknown as [
        { id: string },
      ];
      expect((await responseFor(db.sql, id)).status_code).toBe(200);
    } finally {
      await db.sql`alter role postgres reset pg_net.batch_size`;
      await worker.reload();
    }
  });
});
