// What pgnet says about itself: /metrics read by a real Prometheus text parser, the dashboard's activity in
// /status, and the failure log (no secrets, rate-limited). A real PostgreSQL, a real worker, local fixtures.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import parsePrometheus from "parse-prometheus-text-format";
import { FailureLog, type Finished } from "../src/metrics.ts";
import { createStatusApp } from "../src/status.ts";
import type { Worker } from "../src/worker.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture, header } from "./helpers/fixture.ts";
import { memoryLogger, startWorker, waitFor } from "./helpers/worker.ts";

interface Family {
  name: string;
  help: string;
  type: string;
  metrics: {
    value?: string;
    labels?: Record<string, string>;
    count?: string;
    sum?: string;
    buckets?: Record<string, string>;
  }[];
}

let db: TestDatabase;
let fixture: Fixture;
let other: Fixture;

beforeAll(async () => {
  db = await createDatabase();
  fixture = await Fixture.start("127.0.0.1");
  other = await Fixture.start("::1");
});
afterAll(async () => {
  await fixture.stop();
  await other.stop();
  await db.drop();
});

async function enqueue(url: string, count: number, timeoutMs = 5000): Promise<string[]> {
  const rows = await db.sql`
    select net.http_get(${url}, timeout_milliseconds => ${timeoutMs})::text as id from generate_series(1, ${count})
  `;
  return rows.map((r) => r.id as string);
}

async function settled(ids: string[]): Promise<void> {
  await waitFor(
    async () => {
      const [row] = await db.sql`select count(*)::int as n from net._http_response where id = any(${ids}::bigint[])`;
      return row!.n === ids.length;
    },
    15_000,
    `${ids.length} responses`,
  );
}

/** The status app over a real worker (the queue counts are not what these tests look at). */
function statusApp(worker: Worker, token?: string) {
  return createStatusApp({
    worker,
    metrics: worker.metrics,
    database: "test",
    queueDepth: () => Promise.resolve({ ready: 0, readyTruncated: false, claimed: 0, oldestReadySeconds: 0 }),
    ...(token ? { token } : {}),
  });
}

async function scrape(worker: Worker, token?: string): Promise<Family[]> {
  const app = statusApp(worker, token);
  const response = await app.fetch(
    new Request("http://127.0.0.1/metrics", token ? { headers: { authorization: `Bearer ${token}` } } : {}),
  );
  expect(response.status).toBe(200);
  expect(response.headers.get("content-type")).toContain("text/plain");
  const text = await response.text();
  const families = parsePrometheus(text) as Family[];
  // the parser loses _count and _sum of a histogram whose series have labels (database): read them from the text
  const sample = (name: string) =>
    /^(\S+?)(\{[^}]*\})? (\S+)$/m.exec(text.split("\n").filter((l) => l.startsWith(`${name}{`)).join("\n"))?.[3];
  for (const f of families.filter((f) => f.type === "HISTOGRAM")) {
    for (const m of f.metrics) {
      m.count ??= sample(`${f.name}_count`);
      m.sum ??= sample(`${f.name}_sum`);
    }
  }
  return families;
}

const family = (families: Family[], name: string) => families.find((f) => f.name === name)!;
const value = (families: Family[], name: string, labels: Record<string, string> = {}) =>
  family(families, name)?.metrics
    .filter((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))
    .reduce((sum, m) => sum + Number(m.value ?? m.count ?? 0), 0);

describe("/metrics", () => {
  test("after successes, HTTP errors, timeouts and failures the counters equal what happened", async () => {
    const worker = await startWorker(db.url, { "host-limits": "127.0.0.1=concurrency:100" });
    try {
      const closed = await Fixture.start();
      const refused = closed.url("/x");
      await closed.stop();
      const before = fixture.requests.length;
      const ids = [
        ...await enqueue(fixture.url("/echo"), 5),
        ...await enqueue(other.url("/echo"), 2),
        ...await enqueue(fixture.url("/status/503"), 3),
        ...await enqueue(fixture.url("/status/404"), 2),
        ...await enqueue(fixture.url("/never"), 2, 200),
        ...await enqueue(refused, 1),
        ...await enqueue("http://169.254.169.254/latest/meta-data/", 1),
      ];
      await settled(ids);
      await worker.idle();
      const families = await scrape(worker);
      const requests = family(families, "pgnet_requests_total");
      expect(requests.type).toBe("COUNTER");
      expect(requests.help).toContain("attempts that ended, by outcome");
      const by = (outcome: string) => value(families, "pgnet_requests_total", { outcome });
      expect([by("success"), by("http_5xx"), by("http_4xx"), by("timeout"), by("connection"), by("denied")])
        .toEqual([7, 3, 2, 2, 1, 1]);
      // the fixture saw exactly the attempts that got an answer or timed out on it
      expect(fixture.requests.length - before + other.received("/echo").length).toBe(5 + 3 + 2 + 2 + 2);
      // per-host labels: the --host-limits pattern, or "other"
      // 127.0.0.1: the echo, 503, 404, timeout and refused ones; other: [::1] and the metadata address
      expect(value(families, "pgnet_requests_total", { host: "127.0.0.1" })).toBe(13);
      expect(value(families, "pgnet_requests_total", { host: "other" })).toBe(3);
      const duration = family(families, "pgnet_request_duration_seconds");
      expect(duration.type).toBe("HISTOGRAM");
      const [attempts] = duration.metrics;
      expect(Number(attempts!.count)).toBe(16);
      // the two timeouts took 200 ms at least; nothing else took a quarter of that
      expect(Number(attempts!.count) - Number(attempts!.buckets!["0.1"])).toBe(2);
      expect(Number(attempts!.sum)).toBeGreaterThan(0.4);
      expect(Number(family(families, "pgnet_enqueue_to_stored_seconds").metrics[0]!.count)).toBe(16);
      expect(value(families, "pgnet_statements_total", { kind: "claim", result: "ok" })).toBeGreaterThan(0);
      expect(value(families, "pgnet_statements_total", { kind: "store", result: "ok" })).toBeGreaterThan(0);
      expect(value(families, "pgnet_statement_seconds_total", { kind: "claim" })).toBeGreaterThan(0);
      expect(value(families, "pgnet_up")).toBe(1);
      expect(value(families, "pgnet_in_flight_requests")).toBe(0);
      expect(family(families, "pgnet_build_info").metrics[0]!.labels!.version).toMatch(/^\d+\.\d+/);
      for (const f of families) expect(f.help.length).toBeGreaterThan(0);
    } finally {
      await worker.stop();
    }
  });

  test("needs the status token when one is set", async () => {
    const worker = await startWorker(db.url);
    try {
      const app = statusApp(worker, "sesame");
      expect((await app.fetch(new Request("http://127.0.0.1/metrics"))).status).toBe(401);
      expect((await scrape(worker, "sesame")).length).toBeGreaterThan(5);
      // the dashboard's page holds no data: it loads without the token (and sends it from its #fragment)
      const page = await app.fetch(new Request("http://127.0.0.1/"));
      expect(page.status).toBe(200);
      expect(page.headers.get("content-type")).toContain("text/html");
      expect((await app.fetch(new Request("http://127.0.0.1/assets/uplot.js"))).status).toBe(200);
      expect((await app.fetch(new Request("http://127.0.0.1/status"))).status).toBe(401);
    } finally {
      await worker.stop();
    }
  });
});

describe("activity in /status", () => {
  test("per-second outcomes, the slowest hosts and the last failures, with no header, body or query", async () => {
    const worker = await startWorker(db.url);
    try {
      const ok = await enqueue(other.url("/echo"), 3);
      const [bad] = await db.sql`
        select net.http_get(${fixture.url("/status/500?token=abc")}, headers => '{"Authorization": "Bearer secret"}')
               ::text as id
      `;
      const slow = await enqueue(fixture.url("/delay/300"), 1);
      await settled([...ok, bad!.id, ...slow]);
      const app = statusApp(worker);
      const status = await (await app.fetch(new Request("http://127.0.0.1/status"))).json() as {
        activity: {
          series: { t: number; ok: number; errors: number }[];
          failures: { id: string; host: string; status: number; outcome: string; error: string }[];
          hosts: { host: string; meanMs: number }[];
        };
      };
      const { series, failures, hosts } = status.activity;
      expect(series).toHaveLength(300);
      expect(series.reduce((s, x) => s + x.ok, 0)).toBe(4);
      expect(series.reduce((s, x) => s + x.errors, 0)).toBe(1);
      expect(failures[0]).toMatchObject({ id: bad!.id, host: "127.0.0.1", status: 500, outcome: "http_5xx" });
      expect(hosts[0]!.host).toBe("127.0.0.1"); // the one with the 300 ms endpoint is the slowest
      expect(hosts.map((h) => h.host)).toContain("[::1]");
      const text = JSON.stringify(status.activity);
      expect(text).not.toContain("secret");
      expect(text).not.toContain("token=abc");
    } finally {
      await worker.stop();
    }
  });
});

describe("--log-failures", () => {
  /** A 404 (with secrets in its query, header and body), a refused connection and three successes. */
  async function mixedRequests() {
    const closed = await Fixture.start();
    const refused = closed.url("/x?key=hidden");
    await closed.stop();
    const [bad] = await db.sql`
      select net.http_post(${fixture.url("/status/404?token=abc")}, '{"card": "4111"}',
                           headers => '{"Authorization": "Bearer secret"}')::text as id
    `;
    const ids = {
      notFound: bad!.id as string,
      refused: await enqueue(refused, 1),
      ok: await enqueue(fixture.url("/echo"), 3),
    };
    await settled([ids.notFound, ...ids.refused, ...ids.ok]);
    return ids;
  }

  test("a line for each failure, none for successes, no header, body or query string in any", async () => {
    const logger = memoryLogger();
    const worker = await startWorker(db.url, {}, logger); // without the option
    try {
      await mixedRequests();
      expect(logger.lines.filter((l) => l.includes("request failed"))).toHaveLength(0);
    } finally {
      await worker.stop();
    }
    const log = memoryLogger();
    const logging = new (await import("../src/worker.ts")).Worker({
      target: { url: db.url },
      logger: log,
      flags: { "poll-interval": "200ms" },
      logFailures: true,
    });
    await logging.start();
    try {
      const { notFound, refused: refusedIds, ok: okIds } = await mixedRequests();
      const bad = { id: notFound };
      const lines = log.lines.filter((l) => l.includes("request failed"));
      expect(lines).toHaveLength(2);
      const notFoundLine = lines.find((l) => l.includes(`id=${bad.id}`))!;
      expect(notFoundLine).toContain("method=POST");
      expect(notFoundLine).toContain("host=127.0.0.1");
      expect(notFoundLine).toContain("status=404");
      expect(notFoundLine).toMatch(/durationMs=\d/);
      expect(lines.find((l) => l.includes(`id=${refusedIds[0]}`))).toContain("Couldn't connect to server");
      for (const id of okIds) expect(lines.some((l) => l.includes(`id=${id}`))).toBe(false);
      // an error text that quotes what was queued (headers that are not an object, inserted directly) is cut
      const [quoted] = await db.sql`
        insert into net.http_request_queue (method, url, headers, timeout_milliseconds)
        values ('GET', ${fixture.url("/echo")}, '["Authorization: Bearer secret"]', 5000) returning id::text
      `;
      await settled([quoted!.id]);
      const [stored] = await db.sql`select error_msg from net._http_response where id = ${quoted!.id}`;
      expect(stored!.error_msg).toContain("secret"); // the owner's row keeps the whole text
      const line = log.lines.find((l) => l.includes(`id=${quoted!.id}`))!;
      expect(line).toContain("outcome=invalid");
      expect(line).toContain("headers must be a JSON object, got …");
      const recent = logging.metrics.activity().failures.find((f) => f.id === quoted!.id)!;
      expect(recent.error).toBe("headers must be a JSON object, got …");
      for (const secret of ["secret", "token=abc", "4111", "hidden", "Authorization"]) {
        expect(log.lines.join("\n")).not.toContain(secret);
      }
      expect(fixture.received("/status/404").some((r) => header(r, "Authorization")[0] === "Bearer secret")).toBe(true);
    } finally {
      await logging.stop();
    }
  });

  test("a failing host cannot flood the log: 10 lines a second, the rest counted in the next line", () => {
    const lines: string[] = [];
    const logger = memoryLogger();
    let now = 1_000_000;
    const log = new FailureLog(
      { ...logger, warn: (_message: string, fields?: Record<string, unknown>) => lines.push(JSON.stringify(fields)) },
      10,
      () => now,
    );
    const failed = (id: number): Finished => ({
      id: String(id),
      method: "GET",
      host: "down.example",
      hostLabel: "other",
      row: {
        id: String(id),
        status_code: null,
        content_type: null,
        headers: null,
        content: null,
        timed_out: false,
        error_msg: "Couldn't connect to server",
        body: null,
      },
      durationMs: 1,
      attempt: 1,
      retried: false,
    });
    for (let i = 0; i < 1000; i++) log.attempt(failed(i)); // all in the same millisecond
    expect(lines).toHaveLength(10);
    now += 1000; // a second later, ten more may go, the first saying how many were held back
    for (let i = 1000; i < 1100; i++) log.attempt(failed(i));
    expect(lines).toHaveLength(20);
    expect(JSON.parse(lines[10]!).suppressedBefore).toBe(990);
    expect(JSON.parse(lines[11]!).suppressedBefore).toBeUndefined();
  });
});
