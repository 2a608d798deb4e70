// The net schema as SQL callers see it: signatures, URL handling, Content-Type rules, wake-at-commit, collect.
// No worker runs here: these are the guarantees of the SQL alone.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createDatabase, rawClient, type TestDatabase } from "./helpers/cluster.ts";
import { waitFor } from "./helpers/worker.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createDatabase();
});
afterAll(async () => {
  await db.drop();
});

async function queueCount(): Promise<number> {
  const [row] = await db.sql`select count(*)::int as n from net.http_request_queue`;
  return row!.n;
}

// the version matrix (tests/run.sh) names the major it means to test; the server must be that one
const major = process.env.PGNET_TEST_PG_MAJOR;
test(`the server is the PostgreSQL asked for (${major ?? "the embedded default"})`, async () => {
  const [row] = await db.sql`select current_setting('server_version_num')::int / 10000 as major`;
  if (major) expect(String(row!.major)).toBe(major);
  else expect(row!.major).toBeGreaterThanOrEqual(14);
});

describe("signatures", () => {
  // pg_net-behavior.md §1.2, as pg_get_function_arguments prints it
  const expected: Record<string, [string, string]> = {
    http_get: [
      "url text, params jsonb DEFAULT '{}'::jsonb, headers jsonb DEFAULT '{}'::jsonb, timeout_milliseconds integer DEFAULT 5000",
      "bigint",
    ],
    http_post: [
      "url text, body jsonb DEFAULT '{}'::jsonb, params jsonb DEFAULT '{}'::jsonb, headers jsonb DEFAULT " +
      '\'{"Content-Type": "application/json"}\'::jsonb, timeout_milliseconds integer DEFAULT 5000',
      "bigint",
    ],
    http_delete: [
      "url text, params jsonb DEFAULT '{}'::jsonb, headers jsonb DEFAULT '{}'::jsonb, timeout_milliseconds integer " +
      "DEFAULT 5000, body jsonb DEFAULT NULL::jsonb",
      "bigint",
    ],
    _http_collect_response: ["request_id bigint, async boolean DEFAULT true", "net.http_response_result"],
    http_collect_response: ["request_id bigint, async boolean DEFAULT true", "net.http_response_result"],
    _await_response: ["request_id bigint", "boolean"],
    _urlencode_string: ["string character varying", "text"],
    _encode_url_with_params_array: ["url text, params_array text[]", "text"],
    wake: ["", "void"],
    worker_restart: ["", "boolean"],
    wait_until_running: ["", "void"],
    check_worker_is_up: ["", "void"],
  };

  test("every pg_net function exists with pg_net's arguments, defaults and return type", async () => {
    const rows = await db.sql`
      select p.proname as name, pg_get_function_arguments(p.oid) as args, pg_get_function_result(p.oid) as result,
             p.provolatile as volatility, p.prosecdef as definer
        from pg_proc p where p.pronamespace = 'net'::regnamespace and p.proname = any(${Object.keys(expected)})
    `;
    const actual = Object.fromEntries(rows.map((r) => [r.name, [r.args, r.result]]));
    expect(actual).toEqual(expected);
    // only worker_restart is SECURITY DEFINER (it records the request where callers cannot write: sql/0003);
    // _urlencode_string and _encode_url_with_params_array are immutable, as in pg_net
    expect(rows.filter((r) => r.definer).map((r) => r.name)).toEqual(["worker_restart"]);
    const immutable = rows.filter((r) => r.volatility === "i").map((r) => r.name).sort();
    expect(immutable).toEqual(["_encode_url_with_params_array", "_urlencode_string"]);
  });

  test("the tables keep pg_net's columns in pg_net's order", async () => {
    const columns = async (table: string) =>
      (await db.sql`
        select attname || ' ' || format_type(atttypid, atttypmod) as c from pg_attribute
         where attrelid = ${table}::regclass and attnum > 0 and not attisdropped order by attnum
      `).map((r) => r.c);
    expect((await columns("net.http_request_queue")).slice(0, 6)).toEqual([
      "id bigint",
      "method net.http_method",
      "url text",
      "headers jsonb",
      "body bytea",
      "timeout_milliseconds integer",
    ]);
    expect(await columns("net._http_response")).toEqual([
      "id bigint",
      "status_code integer",
      "content_type text",
      "headers jsonb",
      "content text",
      "timed_out boolean",
      "error_msg text",
      "created timestamp with time zone",
      "enqueued_by name", // pgnet's: the role the response belongs to
      "body bytea", // pgnet's: the exact bytes, when they are not text or were asked for
      "attempts integer", // pgnet's: how many attempts the outcome took
      "last_error text", // pgnet's: what went wrong on the last attempt that failed
    ]);
  });

  test("the types and the method domain match pg_net", async () => {
    const [labels] = await db.sql`select enum_range(null::net.request_status)::text as v`;
    expect(labels!.v).toBe("{PENDING,SUCCESS,ERROR}");
    const [result] = await db
      .sql`select ('SUCCESS', 'ok', (200, '{}'::jsonb, 'b')::net.http_response)::net.http_response_result::text as v`;
    expect(result!.v).toBe('(SUCCESS,ok,"(200,{},b)")');
    const [ok] = await db
      .sql`select 'Get'::net.http_method as a, 'post'::net.http_method as b, 'DELETE'::net.http_method as c`;
    expect(ok).toEqual({ a: "Get", b: "post", c: "DELETE" });
    // pgnet's domain takes every method token (pg_net's only GET, POST and DELETE), and nothing else
    const [put] = await db.sql`select 'PUT'::net.http_method as v`;
    expect(put!.v).toBe("PUT");
    await expect(db.sql`select 'GET /x'::net.http_method`).rejects.toThrow(/http_method_check/);
  });

  test("http_delete accepts one to four positional arguments and takes body last", async () => {
    const url = "http://localhost:1/p";
    const [r] = await db.sql`
      select net.http_delete(${url}) as a, net.http_delete(${url}, '{"x":"1"}') as b,
             net.http_delete(${url}, '{}', '{"h":"v"}') as c, net.http_delete(${url}, '{}', '{}', 1000) as d,
             net.http_delete(url => ${url}, body => '{"k": [1, 2]}') as e
    `;
    const rows = await db.sql`
      select id, url, headers, timeout_milliseconds as t, convert_from(body, 'UTF8') as body
        from net.http_request_queue where id = any(${Object.values(r!)}::bigint[]) order by id
    `;
    expect(rows.map((q) => [q.url, q.headers, q.t, q.body])).toEqual([
      [url, {}, 5000, null],
      [`${url}?x=1`, {}, 5000, null],
      [url, { h: "v" }, 5000, null],
      [url, {}, 1000, null],
      [url, {}, 5000, '{"k": [1, 2]}'],
    ]);
    await db.sql`delete from net.http_request_queue`;
  });
});

describe("URLs", () => {
  // pg_net-behavior.md ERR-01: libcurl 7.88's reasons
  const invalid: [string, string][] = [
    ["localhost:6666", "Unsupported URL scheme"],
    ["/malformed_url", "Bad scheme"],
    ["", "Bad scheme"],
    ["http//x", "Bad scheme"],
    [" http://x/", "Bad scheme"],
    ["foo://bar", "Unsupported URL scheme"],
    ["mailto:x@y", "Unsupported URL scheme"],
    ["ws://x/", "Unsupported URL scheme"],
    ["http://", "No host part in the URL"],
    ["http://:80/", "No host part in the URL"],
    ["http://localhost:99999/", "Port number was not a decimal number between 0 and 65535"],
    ["http://localhost:abc/", "Port number was not a decimal number between 0 and 65535"],
    ["http://x/ ", "Bad path"],
    ["http://localhost/p q", "Bad path"],
    ["http://user:pw@localhost/p?q=a b", "Bad query"],
    ["http://a b/", "Bad hostname"],
    ["http://x/#a b", "Bad fragment"],
    ["http://[::1/", "Bad IPv6 address"],
    ["http:x", "Unsupported number of slashes following scheme"],
    ["http://x/\tp", "Bad path"],
  ];

  test.each(invalid)("http_get(%p) fails in the caller's transaction: %s", async (url, reason) => {
    const before = await queueCount();
    const message = `invalid URL "${url}": ${reason}`;
    await expect(db.sql`select net.http_get(${url})`).rejects.toThrow(message);
    await expect(db.sql`select net.http_post(${url})`).rejects.toThrow(message);
    await expect(db.sql`select net.http_delete(${url})`).rejects.toThrow(message);
    expect(await queueCount()).toBe(before);
  });

  // pg_net-behavior.md URL-03
  const normalised: [string, string[], string][] = [
    ["http://localhost:8080", [], "http://localhost:8080/"],
    ["http://localhost:8080?", [], "http://localhost:8080/"],
    ["http://localhost:8080/a?x=1", ["b=2", "c=3"], "http://localhost:8080/a?x=1&b=2&c=3"],
    ["http://localhost:8080/a?x=1&", ["b=2"], "http://localhost:8080/a?x=1&b=2"],
    ["http://localhost:8080/a?", ["b=2"], "http://localhost:8080/a?b=2"],
    ["http://localhost:8080/a#frag", ["b=2"], "http://localhost:8080/a?b=2#frag"],
    ["http://localhost:8080/p?a=1#f", ["b=2"], "http://localhost:8080/p?a=1&b=2#f"],
    ["http://localhost/a?b", ["&c=1"], "http://localhost/a?b&&c=1"],
    ["http://localhost/p", ["a b"], "http://localhost/p?a b"],
    ["HTTP://LocalHost:8080/A/../b/./c", [], "http://LocalHost:8080/b/c"],
    ["HTTPS://x", [], "https://x/"],
    ["http://localhost:80/p", [], "http://localhost:80/p"],
    ["https://localhost:443/p", [], "https://localhost:443/p"],
    ["http://x:/", [], "http://x/"],
    ["http:/x", [], "http://x/"],
    ["http://localhost//a//b", [], "http://localhost//a//b"],
    ["http://localhost/%7e%41", [], "http://localhost/%7e%41"],
    ["http://x/?q=%7B", [], "http://x/?q=%7B"],
    ["http://[::1]:8888", [], "http://[::1]:8888/"],
    ["http://münchen.de/", [], "http://münchen.de/"],
    ["http://localhost/ümlaut?x=é", [], "http://localhost/ümlaut?x=é"],
    ["http://localhost/a/b/..", [], "http://localhost/a/"],
    ["http://user:pw@localhost/p", ["a=1"], "http://user:pw@localhost/p?a=1"],
    ["ftp://localhost/p", [], "ftp://localhost/p"],
    ["file:///etc/passwd", [], "file:///etc/passwd"],
  ];

  test.each(normalised)("_encode_url_with_params_array(%p, %p) gives %p", async (url, params, result) => {
    const [row] = await db.sql`select net._encode_url_with_params_array(${url}, ${params}::text[]) as v`;
    expect(row!.v).toBe(result);
  });

  test("the enqueue's shortcut for plain URLs stores exactly what the full parser returns", async () => {
    // URLs the shortcut takes (lower-case http(s), plain host, a port, a path, no dot-segment, no fragment)
    // and URLs just outside it, which go through the parser: either way the stored URL is the parser's
    const urls = [
      "http://example.com/",
      "https://api.example.com/v1/hooks?id=42&x=a,b",
      "http://127.0.0.1:8080/p/q;r=1?",
      "http://localhost:9999/%7Euser/?a=b/c?d",
      "http://localhost:09/x",
      "http://localhost:65535/x",
      "HTTP://Example.com/Case",
      "http://example.com",
      "http://example.com/./a/../b",
      "http://example.com/.well-known/x",
      "http://example.com/p#frag",
      "http://user:pw@example.com/",
      "http://[::1]:8080/x",
      "http://exa_mple.com/x",
      "http://example.com/ü",
      // ports: every one from 1 to 65535 written without leading zeros is taken as it is (sql/0008)
      "http://localhost:1/x",
      "http://localhost:18080/x",
      "https://localhost:65535/x?y",
      "http://localhost:0/x",
      "http://localhost:00080/x",
      "http://localhost:65536/x",
      "http://localhost:99999/x",
      "http://localhost:123456/x",
      "http://localhost:/x",
      "http://a:1:2/x",
      "http://:80/x",
      "http:///x",
      "http://h/p??",
      "http://h/a?b=/./c",
      "http://h//x",
      "http://h/%",
      "http://h-.b/x",
    ];
    const errors: string[] = [];
    for (const url of urls) {
      // a URL the parser rejects is rejected by the enqueue with the parser's message
      const parsed = await db.sql`select net._encode_url_with_params_array(${url}, '{}') as v`
        .then(([row]) => ({ url: row!.v as string }), (e: Error) => ({ error: e.message }));
      const stored = await db.sql`select net.http_get(${url}) as id`.then(
        async ([queued]) => {
          const [row] = await db.sql`select url from net.http_request_queue where id = ${queued!.id}`;
          return { url: row!.url as string };
        },
        (e: Error) => ({ error: e.message }),
      );
      expect({ url, stored }).toEqual({ url, stored: parsed });
      if ("error" in parsed) errors.push(url);
    }
    expect(errors).toEqual([
      "http://localhost:65536/x",
      "http://localhost:99999/x",
      "http://localhost:123456/x",
      "http://:80/x",
    ]);
    await db.sql`delete from net.http_request_queue`;
  });

  test("NULL elements are skipped and a NULL url or array gives NULL", async () => {
    const [row] = await db.sql`
      select net._encode_url_with_params_array('http://localhost/p', array['a=1', null, '', 'b=2']) as a,
             net._encode_url_with_params_array(null, '{}') as b,
             net._encode_url_with_params_array('http://x/', null) as c
    `;
    expect(row).toEqual({ a: "http://localhost/p?a=1&b=2", b: null, c: null });
  });

  test("_urlencode_string encodes every byte outside A-Za-z0-9-._~ with uppercase hex", async () => {
    const input = "a b&c=d/é~_-.!*'()+?#%:@,;$[]{}|\\^`\"<>";
    const [row] = await db.sql`
      select net._urlencode_string(${input}) as v, net._urlencode_string('') as empty, net._urlencode_string(null) as n
    `;
    expect(row).toEqual({
      v: "a%20b%26c%3Dd%2F%C3%A9~_-.%21%2A%27%28%29%2B%3F%23%25%3A%40%2C%3B%24%5B%5D%7B%7D%7C%5C%5E%60%22%3C%3E",
      empty: "",
      n: null,
    });
  });

  test("params are encoded in jsonb key order, JSON nulls dropped, other values as JSON text", async () => {
    const [{ id }] = await db.sql`
      select net.http_get('http://localhost:8080/p?x=1', '{"a b":"c&d","e":null,"f":1,"g":{"h":true},"i":"ü"}') as id
    ` as unknown as [{ id: string }];
    const [row] = await db.sql`select url from net.http_request_queue where id = ${id}`;
    expect(row!.url).toBe("http://localhost:8080/p?x=1&f=1&g=%7B%22h%22%3A%20true%7D&i=%C3%BC&a%20b=c%26d");
    await expect(db.sql`select net.http_get('http://localhost/', '[1]')`).rejects.toThrow(
      "cannot call jsonb_each_text on a non-object",
    );
  });

  test("a NULL url fails on the queue's NOT NULL constraint, as in pg_net", async () => {
    await expect(db.sql`select net.http_get(null)`).rejects.toThrow('null value in column "url"');
  });
});

describe("enqueueing", () => {
  test("http_get() returns the request id and queues the request", async () => {
    const [{ id }] = await db
      .sql`select net.http_get('http://localhost/x', headers => '{"A": "1"}') as id` as unknown as [{ id: string }];
    const [row] = await db
      .sql`select method, url, headers, body, timeout_milliseconds as t from net.http_request_queue where id = ${id}`;
    expect(row).toEqual({ method: "GET", url: "http://localhost/x", headers: { A: "1" }, body: null, t: 5000 });
  });

  test("headers that are not a JSON object fail in the caller's transaction and queue nothing", async () => {
    const before = await queueCount();
    for (const [headers, kind] of [["[1, 2]", "array"], ['"text"', "string"], ["3", "number"]] as const) {
      await expect(db.sql`select net.http_get('http://localhost/', headers => ${headers}::text::jsonb)`).rejects
        .toThrow(
          `headers must be a JSON object, got a JSON ${kind}`,
        );
    }
    expect(await queueCount()).toBe(before);
  });

  test("http_post() adds Content-Type: application/json when no content-type is given", async () => {
    const [{ id }] = await db
      .sql`select net.http_post('http://localhost/', headers => '{"other": "x"}') as id` as unknown as [{ id: string }];
    const [row] = await db
      .sql`select headers, convert_from(body, 'UTF8') as body from net.http_request_queue where id = ${id}`;
    expect(row).toEqual({ headers: { other: "x", "Content-Type": "application/json" }, body: "{}" });
  });

  test("http_post() accepts application/json under any header-name case and nothing else", async () => {
    const [{ id }] = await db
      .sql`select net.http_post('http://localhost/', headers => '{"content-TYPE": "application/json"}') as id` as unknown as [
        { id: string },
      ];
    const [row] = await db.sql`select headers from net.http_request_queue where id = ${id}`;
    expect(row!.headers).toEqual({ "content-TYPE": "application/json" });
    for (const type of ["application/json; charset=utf-8", "text/plain"]) {
      const headers = JSON.stringify({ "Content-Type": type });
      await expect(db.sql`select net.http_post('http://localhost/', headers => ${headers}::text::jsonb)`).rejects
        .toThrow(
          'Content-Type header must be "application/json"',
        );
    }
  });

  test("http_post() stores the body as jsonb's canonical text, and NULL headers or body as NULL", async () => {
    const [r] = await db.sql`
      select net.http_post('http://localhost/', '{"b": 2, "a": 1, "a": 3}') as canonical,
             net.http_post('http://localhost/', headers => null) as no_headers,
             net.http_post('http://localhost/', body => null) as no_body
    `;
    const rows = await db.sql`
      select id, headers, convert_from(body, 'UTF8') as body from net.http_request_queue
       where id = any(${[r!.canonical, r!.no_headers, r!.no_body]}::bigint[]) order by id
    `;
    expect(rows.map((q) => [q.headers, q.body])).toEqual([
      [{ "Content-Type": "application/json" }, '{"a": 3, "b": 2}'],
      [null, "{}"],
      [{ "Content-Type": "application/json" }, null],
    ]);
  });

  test("any role, created before or after the install, can enqueue and read responses", async () => {
    await db.sql`create role pgnet_after_install login`;
    try {
      const result = await db.sql.begin(async (tx) => {
        await tx`set local role pgnet_after_install`;
        const [{ id }] = await tx`select net.http_get('http://localhost/') as id` as unknown as [{ id: string }];
        await tx`select count(*) from net._http_response`;
        const [c] = await tx`select status from net._http_collect_response(${id})`;
        return c!.status;
      });
      expect(result).toBe("PENDING");
    } finally {
      await db.sql`drop owned by pgnet_after_install`;
      await db.sql`drop role pgnet_after_install`;
    }
  });
});

describe("wake", () => {
  test("a commit wakes the worker once, with its first request's id; a rollback never does", async () => {
    const seen: string[] = [];
    const payloads: string[] = [];
    const listener = rawClient(db.url, {
      max: 1,
      onnotify: (channel: string, payload: string) => seen.push(channel) && payloads.push(payload),
    } as never);
    await listener`listen pgnet_wake`;
    try {
      const first = await db.sql.begin(async (tx) => {
        const [row] =
          await tx`select net.http_get('http://localhost/a')::text as a, net.http_get('http://localhost/b')`;
        await tx`select net.http_post('http://localhost/c')`;
        return row!.a as string;
      });
      await waitFor(() => seen.length === 1, 5000, "the first wake");
      await db.sql.begin(async (tx) => {
        await tx`select net.http_get('http://localhost/rolled-back')`;
        await tx`select net.wake()`;
        throw new Error("roll back");
      }).catch(() => {});
      // notifications arrive in commit order: once this one is here, a wake from the rollback would be too
      await db.sql`select net.wake()`;
      await waitFor(() => seen.length === 2, 5000, "the second wake");
      expect(seen).toEqual(["pgnet_wake", "pgnet_wake"]);
      // the worker reads the queue from the id before the first (sql/0012); net.wake() names none
      expect(payloads).toEqual([first, ""]);
    } finally {
      await listener.end();
    }
  });

  test("a savepoint rolled back takes its wake with it, and each transaction on a session wakes again", async () => {
    // the enqueue notifies once a transaction and marks it (sql/0009): the mark must go where the notify goes
    const seen: string[] = [];
    const listener = rawClient(
      db.url,
      { max: 1, onnotify: (_: string, payload: string) => seen.push(payload) } as never,
    );
    const session = rawClient(db.url, { max: 1 });
    await listener`listen pgnet_wake`;
    try {
      const kept = await session.begin(async (tx) => {
        await tx.savepoint(async (sp) => {
          await sp`select net.http_get('http://localhost/rolled-back')`;
          throw new Error("roll back to the savepoint");
        }).catch(() => {});
        return (await tx`select net.http_get('http://localhost/kept')::text as id`)[0]!.id as string;
      });
      await waitFor(() => seen.length === 1, 5000, "the wake of the kept request");
      expect(seen).toEqual([kept]); // the rolled-back request's id went with its wake
      for (const path of ["next", "after"]) {
        await session`select net.http_get(${`http://localhost/${path}`})`;
        await waitFor(() => seen.length === (path === "next" ? 2 : 3), 5000, `the wake of /${path}`);
      }
      const [row] = await session`select count(*)::int as n from net.http_request_queue
                                    where url in ('http://localhost/kept', 'http://localhost/next',
                                                  'http://localhost/after', 'http://localhost/rolled-back')`;
      expect(row!.n).toBe(3);
    } finally {
      await session.end();
      await listener.end();
    }
  });

  test("net.http_request marks its transaction as woken too (sql/0011), and a rolled-back savepoint unmarks it", async () => {
    const seen: string[] = [];
    const payloads: string[] = [];
    const listener = rawClient(db.url, {
      max: 1,
      onnotify: (channel: string, payload: string) => seen.push(channel) && payloads.push(payload),
    } as never);
    const session = rawClient(db.url, { max: 1 });
    await listener`listen pgnet_wake`;
    const woken = async (sql: (strings: TemplateStringsArray) => Promise<unknown>) =>
      ((await sql`select current_setting('pgnet.woken', true) as woken`) as { woken: string | null }[])[0]!.woken;
    try {
      const marks = await session.begin(async (tx) => {
        await tx.savepoint(async (sp) => {
          await sp`select net.http_request('http://localhost/rolled-back', 'PUT', body => 'x')`;
          throw new Error("roll back to the savepoint");
        }).catch(() => {});
        const afterRollback = await woken(tx);
        const [kept] = await tx`select net.http_request('http://localhost/kept', 'PATCH', body => 'x')::text as id`;
        const afterRequest = await woken(tx);
        await tx`select net.http_get('http://localhost/kept-too')`; // sees the mark: no second notify to build
        return [afterRollback, afterRequest, kept!.id as string];
      });
      expect(marks[0]).not.toBe("yes");
      expect(marks[1]).toBe("yes");
      await waitFor(() => seen.length === 1, 5000, "the wake of the kept requests");
      expect(payloads).toEqual([marks[2]!]); // net.http_request's wake carries its id too (sql/0012)
      expect(await woken(session)).not.toBe("yes"); // the mark went with the transaction
      await session`select net.http_request('http://localhost/next', 'DELETE')`;
      await waitFor(() => seen.length === 2, 5000, "the wake of the next transaction");
    } finally {
      await session.end();
      await listener.end();
    }
  });
});

describe("collect", () => {
  test("an unknown id is an ERROR with pg_net's message, a queued one is PENDING", async () => {
    const [{ id }] = await db.sql`select net.http_get('http://localhost/') as id` as unknown as [{ id: string }];
    const [queued] = await db.sql`select status, message, response from net._http_collect_response(${id})`;
    expect(queued).toEqual({ status: "PENDING", message: "request is pending", response: null });
    const [unknown] = await db.sql`select status, message, response from net._http_collect_response(987654321)`;
    expect(unknown).toEqual({ status: "ERROR", message: "request matching request_id not found", response: null });
  });

  test("a stored response is SUCCESS for any status, a stored failure is ERROR with its message", async () => {
    await db.sql`
      insert into net._http_response (id, status_code, content_type, headers, content, timed_out, error_msg) values
        (900001, 500, 'text/plain', '{"A": "b"}', 'oops', false, null),
        (900002, null, null, null, null, true, 'Timeout of 1000 ms reached')
    `;
    const [ok] = await db.sql`
      select status, message, (response).status_code, (response).headers, (response).body
        from net._http_collect_response(900001, async => false)
    `;
    expect(ok).toEqual({ status: "SUCCESS", message: "ok", status_code: 500, headers: { A: "b" }, body: "oops" });
    const [failed] = await db.sql`select status, message from net._http_collect_response(900002)`;
    expect(failed).toEqual({ status: "ERROR", message: "Timeout of 1000 ms reached" });
  });

  test("the deprecated http_collect_response() works and says it is deprecated", async () => {
    const notices: string[] = [];
    const client = rawClient(
      db.url,
      { max: 1, onnotice: (n: { message: string }) => notices.push(n.message) } as never,
    );
    try {
      const [row] = await client`select status from net.http_collect_response(900001)`;
      expect(row!.status).toBe("SUCCESS");
      expect(notices).toEqual(["The net.http_collect_response function is deprecated."]);
    } finally {
      await client.end();
    }
  });

  test("waiting for an unknown id returns false instead of hanging", async () => {
    const [row] = await db.sql`select net._await_response(123456789) as found`;
    expect(row!.found).toBe(false);
  });

  test("waiting in the transaction that queued the request fails with a clear message", async () => {
    const attempt = db.sql.begin(async (tx) => {
      const [{ id }] = await tx`select net.http_get('http://localhost/') as id` as unknown as [{ id: string }];
      await tx`select net._http_collect_response(${id}, async => false)`;
    });
    await expect(attempt).rejects.toThrow(/was queued in this transaction: commit before waiting for its response/);
  });

  test("waiting under REPEATABLE READ fails instead of waiting forever", async () => {
    const [{ id }] = await db.sql`select net.http_get('http://localhost/') as id` as unknown as [{ id: string }];
    const attempt = db.sql.begin("isolation level repeatable read", async (tx) => {
      await tx`select net._http_collect_response(${id}, async => false)`;
    });
    await expect(attempt).rejects.toThrow("waiting for a response needs READ COMMITTED, not repeatable read");
  });
});

describe("worker checks without a worker", () => {
  test("check_worker_is_up() raises pg_net's error when no worker serves the database", async () => {
    await expect(db.sql`select net.check_worker_is_up()`).rejects.toThrow("the pg_net background worker is not up");
  });

  test("wait_until_running() waits while no worker is up (cancelled by statement_timeout)", async () => {
    const attempt = db.sql.begin(async (tx) => {
      await tx`set local statement_timeout = '300ms'`;
      await tx`select net.wait_until_running()`;
    });
    await expect(attempt).rejects.toThrow("canceling statement due to statement timeout");
  });

  test("worker_restart() returns true for any role", async () => {
    await db.sql`create role pgnet_plain login`;
    try {
      const result = await db.sql.begin(async (tx) => {
        await tx`set local role pgnet_plain`;
        const [row] = await tx`select net.worker_restart() as ok`;
        return row!.ok;
      });
      expect(result).toBe(true);
    } finally {
      await db.sql`drop role pgnet_plain`;
    }
  });
});
