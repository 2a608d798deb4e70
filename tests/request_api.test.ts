// Beyond pg_net's API: net.http_request with any method and any body, http_put/patch/head, binary responses,
// header names as sent, and the errors a caller gets in its own transaction.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:net";
import { gzipSync } from "node:zlib";
import type { Worker } from "../src/worker.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture, header, type Received } from "./helpers/fixture.ts";
import { responseFor, startWorker } from "./helpers/worker.ts";

let db: TestDatabase;
let fixture: Fixture;
let worker: Worker;
let spelled: Server;
let spelledPort: number;

// a PNG of one transparent pixel, as a browser would fetch it
const PNG = Buffer.from(
  "89504e470d0a1a0a0000000d4948445200000001000000010806000000" +
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082",
  "hex",
);
const GZIP = gzipSync(Buffer.from("hello from a gzip file\n".repeat(50)));

beforeAll(async () => {
  db = await createDatabase();
  fixture = await Fixture.start();
  worker = await startWorker(db.url, { "max-response-size": "16MiB", "max-request-size": "16MiB" });
  // answers with header names spelled as real services spell them
  spelled = createServer((socket) => {
    socket.on("error", () => {});
    socket.once("data", () =>
      socket.end(
        'HTTP/1.1 200 OK\r\nX-RateLimit-Remaining: 41\r\nx-amz-request-id: 4442587FB7D0A2F9\r\nETag: "33a64df5"\r\n' +
          'WWW-Authenticate: Bearer realm="api"\r\nContent-Length: 2\r\n\r\nok',
      ));
  });
  await new Promise<void>((resolve) => spelled.listen(0, "127.0.0.1", () => resolve()));
  spelledPort = (spelled.address() as { port: number }).port;
});
afterAll(async () => {
  await worker.stop({ timeout: 1000 });
  await new Promise<void>((resolve) => spelled.close(() => resolve()));
  await fixture.stop();
  await db.drop();
});

async function id(query: Promise<unknown>): Promise<string> {
  return String(((await query) as { id: string }[])[0]!.id);
}

function sent(requestId: string): Received {
  const received = fixture.requests.filter((r) => header(r, "X-Pgnet-Request-Id").includes(requestId));
  expect(received).toHaveLength(1);
  return received[0]!;
}

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

describe("methods", () => {
  for (const method of ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "purge"]) {
    test(`http_request with method ${method} reaches the target with that request line`, async () => {
      const requestId = await id(db.sql`select net.http_request(${fixture.url("/echo")}, ${method}) as id`);
      const row = await responseFor(db.sql, requestId);
      expect(row.status_code).toBe(200);
      expect(sent(requestId).method).toBe(method.toUpperCase());
      // a HEAD response has no body
      if (method === "HEAD") expect(row.content).toBeNull();
    });
  }

  test("http_put, http_patch and http_head send their method with pg_net's conventions", async () => {
    const put = await id(db.sql`select net.http_put(${fixture.url("/echo")}, '{"b": 2, "a": 1}') as id`);
    const patch = await id(db.sql`select net.http_patch(${fixture.url("/echo")}, '{"op": "x"}') as id`);
    const head = await id(db.sql`select net.http_head(${fixture.url("/echo")}, '{"q": "1"}') as id`);
    for (const requestId of [put, patch, head]) expect((await responseFor(db.sql, requestId)).status_code).toBe(200);
    expect([sent(put).method, sent(put).body.toString()]).toEqual(["PUT", '{"a": 1, "b": 2}']);
    expect(header(sent(put), "Content-Type")).toEqual(["application/json"]);
    expect(sent(patch).method).toBe("PATCH");
    expect([sent(head).method, sent(head).target]).toEqual(["HEAD", "/echo?q=1"]);
    await expect(db.sql`select net.http_put(${fixture.url("/")}, '{}', headers => '{"Content-Type": "text/plain"}')`)
      .rejects.toThrow('Content-Type header must be "application/json"');
  });
});

describe("bodies", () => {
  test("a text body arrives as UTF-8, byte for byte, with text/plain; charset=utf-8", async () => {
    const text = "héllo\nwörld ✓";
    const requestId = await id(db.sql`select net.http_request(${fixture.url("/echo")}, 'POST', body => ${text}) as id`);
    await responseFor(db.sql, requestId);
    const received = sent(requestId);
    expect(received.body.equals(Buffer.from(text, "utf8"))).toBe(true);
    expect(header(received, "Content-Type")).toEqual(["text/plain; charset=utf-8"]);
    expect(header(received, "Content-Length")).toEqual([String(Buffer.byteLength(text))]);
  });

  test("a json_body arrives as jsonb's text with application/json; a +json type is accepted", async () => {
    const requestId = await id(db.sql`
      select net.http_request(${fixture.url("/echo")}, 'PUT', json_body => '{"z": [1, 2], "a": null}') as id
    `);
    const other = await id(db.sql`
      select net.http_request(${fixture.url("/echo")}, 'POST', json_body => '{"x": 1}',
                              headers => '{"Content-Type": "application/merge-patch+json"}') as id
    `);
    await responseFor(db.sql, requestId);
    await responseFor(db.sql, other);
    expect(sent(requestId).body.toString()).toBe('{"a": null, "z": [1, 2]}');
    expect(header(sent(requestId), "Content-Type")).toEqual(["application/json"]);
    expect(header(sent(other), "Content-Type")).toEqual(["application/merge-patch+json"]);
  });

  test("a form_body is encoded like params, with application/x-www-form-urlencoded", async () => {
    const requestId = await id(db.sql`
      select net.http_request(${fixture.url("/echo")}, 'POST',
                              form_body => '{"name": "Ada Lovelace", "tags": "a&b=c", "skip": null, "n": 1}') as id
    `);
    await responseFor(db.sql, requestId);
    expect(sent(requestId).body.toString()).toBe("n=1&name=Ada%20Lovelace&tags=a%26b%3Dc");
    expect(header(sent(requestId), "Content-Type")).toEqual(["application/x-www-form-urlencoded"]);
  });

  test("a binary_body arrives byte for byte, NUL and 0xff included, with application/octet-stream", async () => {
    const bytes = Buffer.from([0, 1, 2, 255, 254, 0, 10, 13]);
    const requestId = await id(db.sql`
      select net.http_request(${fixture.url("/echo")}, 'POST', binary_body => ${bytes}::bytea) as id
    `);
    await responseFor(db.sql, requestId);
    expect(sent(requestId).body.equals(bytes)).toBe(true);
    expect(header(sent(requestId), "Content-Type")).toEqual(["application/octet-stream"]);
    expect(header(sent(requestId), "Content-Length")).toEqual(["8"]);
  });

  test("a 10 MB body goes out whole, and a 10 MB response is stored whole", async () => {
    const size = 10 * 1024 * 1024;
    const requestId = await id(db.sql`
      select net.http_request(${fixture.url("/status/200")}, 'PUT',
                              binary_body => decode(repeat('0123456789abcdef', ${size / 8}), 'hex'),
                              timeout_milliseconds => 60000) as id
    `);
    expect((await responseFor(db.sql, requestId, 60_000)).status_code).toBe(200);
    const received = sent(requestId).body;
    expect(received.length).toBe(size);
    expect(sha256(received)).toBe(sha256(Buffer.from("0123456789abcdef".repeat(size / 8), "hex")));
    const big = await id(db.sql`
      select net.http_request(${fixture.url(`/huge/${size}`)}, timeout_milliseconds => 60000) as id
    `);
    await responseFor(db.sql, big, 60_000);
    const [stored] = await db.sql`
      select octet_length(content) as n, md5(content) = md5(repeat('a', ${size})) as same
        from net._http_response where id = ${big}
    `;
    expect(stored).toEqual({ n: size, same: true });
  }, 120_000);

  test("the caller's transaction gets the error for a bad method, two bodies, a GET body or a mismatched type", async () => {
    const url = fixture.url("/echo");
    const cases: [Promise<unknown>, string][] = [
      [db.sql`select net.http_request(${url}, 'GE T')`, 'invalid method "GE T": expected an HTTP method token'],
      [db.sql`select net.http_request(${url}, '')`, 'invalid method "": expected an HTTP method token'],
      [db.sql`select net.http_request(${url}, 'POST', body => 'a', json_body => '{}')`, "give at most one body"],
      [db.sql`select net.http_request(${url}, 'GET', body => 'a')`, "a GET request has no body"],
      [db.sql`select net.http_request(${url}, 'head', json_body => '{}')`, "a HEAD request has no body"],
      [
        db.sql`select net.http_request(${url}, 'POST', json_body => '{}', headers => '{"content-type": "text/plain"}')`,
        'a json_body needs a JSON Content-Type (application/json or application/…+json), got "text/plain"',
      ],
      [
        db.sql`select net.http_request(${url}, 'POST', form_body => '{}', headers => '{"Content-Type": "text/csv"}')`,
        'a form_body needs Content-Type application/x-www-form-urlencoded, got "text/csv"',
      ],
      [db.sql`select net.http_request(${url}, 'POST', form_body => '[1]')`, "form_body must be a JSON object"],
      [db.sql`select net.http_request(${url}, headers => '[1]')`, "headers must be a JSON object, got a JSON array"],
      [db.sql`select net.http_request('ftp//x')`, 'invalid URL "ftp//x": Bad scheme'],
    ];
    const [before] = await db.sql`select count(*)::int as n from net.http_request_queue`;
    for (const [query, message] of cases) await expect(query).rejects.toThrow(message);
    const [after] = await db.sql`select count(*)::int as n from net.http_request_queue`;
    expect(after!.n).toBe(before!.n);
  });

  test("ordered_headers go out in the caller's order; headers in jsonb's", async () => {
    const ordered = await id(db.sql`
      select net.http_request(${fixture.url("/echo")},
                              ordered_headers => '{"X-Zeta": "1", "X-Alpha": "2", "X-Mid-Length": "3"}') as id
    `);
    const sorted = await id(db.sql`
      select net.http_request(${fixture.url("/echo")}, headers => '{"X-Zeta": "1", "X-Alpha": "2"}') as id
    `);
    await responseFor(db.sql, ordered);
    await responseFor(db.sql, sorted);
    const names = (r: Received) =>
      r.headers.map(([n]) => n).filter((n) => n.startsWith("X-") && !n.startsWith("X-Pgnet-"));
    expect(names(sent(ordered))).toEqual(["X-Zeta", "X-Alpha", "X-Mid-Length"]);
    expect(names(sent(sorted))).toEqual(["X-Zeta", "X-Alpha"]); // jsonb: equal lengths, then bytes
  });
});

describe("responses", () => {
  test("a PNG and a gzip file come back byte-identical, in body, without being asked", async () => {
    for (const [bytes, type] of [[PNG, "image/png"], [GZIP, "application/gzip"]] as const) {
      const url = fixture.url(`/bytes?hex=${bytes.toString("hex")}&type=${encodeURIComponent(type)}`);
      const requestId = await id(db.sql`select net.http_get(${url}) as id`);
      await responseFor(db.sql, requestId);
      const [row] = await db.sql`
        select encode(sha256(body), 'hex') as stored, encode(sha256(net.http_response_body(${requestId}::bigint)), 'hex') as via,
               content_type
          from net._http_response where id = ${requestId}
      `;
      expect(row).toEqual({ stored: sha256(bytes), via: sha256(bytes), content_type: type });
    }
  });

  test("a text response keeps content as before and no second copy; raw_response keeps the bytes too", async () => {
    const plain = await id(db.sql`select net.http_get(${fixture.url("/echo")}) as id`);
    const raw = await id(db.sql`select net.http_request(${fixture.url("/echo")}, raw_response => true) as id`);
    await responseFor(db.sql, plain);
    await responseFor(db.sql, raw);
    const rows = await db.sql`
      select id, body is null as no_body, convert_from(body, 'UTF8') = content as same, content like '{"method":"GET"%' as text
        from net._http_response where id in (${plain}, ${raw}) order by id
    `;
    expect(rows.map((r) => ({ ...r }))).toEqual([
      { id: plain, no_body: true, same: null, text: true },
      { id: raw, no_body: false, same: true, text: true },
    ]);
    const [viaText] = await db.sql`select net.http_response_body(${plain}::bigint) = convert_to(content, 'UTF8') as same
                                      from net._http_response where id = ${plain}`;
    expect(viaText!.same).toBe(true);
  });

  test("response header names are stored exactly as the server spelled them", async () => {
    const requestId = await id(db.sql`select net.http_get(${`http://127.0.0.1:${spelledPort}/`}) as id`);
    await responseFor(db.sql, requestId);
    const [row] = await db.sql`
      select headers->>'X-RateLimit-Remaining' as remaining, headers->>'x-amz-request-id' as amz,
             headers->>'ETag' as etag, headers->>'WWW-Authenticate' as auth,
             headers ? 'X-Ratelimit-Remaining' as rewritten
        from net._http_response where id = ${requestId}
    `;
    expect(row).toEqual({
      remaining: "41",
      amz: "4442587FB7D0A2F9",
      etag: '"33a64df5"',
      auth: 'Bearer realm="api"',
      rewritten: false,
    });
  });

  test("http_response_body is NULL for a failed or unknown request and waits with async => false", async () => {
    const failed = await id(db.sql`select net.http_get('http://127.0.0.1:1/') as id`);
    await responseFor(db.sql, failed);
    const [row] = await db.sql`
      select net.http_response_body(${failed}::bigint) is null as failed, net.http_response_body(987654321) is null as unknown
    `;
    expect(row).toEqual({ failed: true, unknown: true });
    const later = await id(db.sql`select net.http_get(${fixture.url("/delay/300")}) as id`);
    const [waited] = await db
      .sql`select convert_from(net.http_response_body(${later}::bigint, async => false), 'UTF8') as v`;
    expect(waited!.v).toBe("done");
  });
});
