// The status app in-process (no port): health, status, reload, restart, the token, against a real worker.

import { afterAll, beforeAll, expect, test } from "bun:test";
import { readQueueDepth } from "../src/queue.ts";
import { createStatusApp, type StatusDeps } from "../src/status.ts";
import type { Worker } from "../src/worker.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { forgetRequests, startWorker } from "./helpers/worker.ts";

let db: TestDatabase;
let worker: Worker;
beforeAll(async () => {
  db = await createDatabase();
  worker = await startWorker(db.url);
});
afterAll(async () => {
  await worker.stop({ timeout: 1000 });
  await db.drop();
});

function app(extra: Partial<StatusDeps> = {}) {
  return createStatusApp({
    worker,
    database: "127.0.0.1:5432/test",
    queueDepth: () => readQueueDepth(db.sql),
    ...extra,
  });
}

test("GET /health is 200 while the worker is connected and making progress", async () => {
  const response = await app().request("/health");
  expect(response.status).toBe(200);
  expect(await response.json()).toEqual({
    ok: true,
    state: "running",
    connected: true,
    inFlight: 0,
    databases: [{ name: "test", ok: true }],
  });
});

test("GET /health is 503 with the reason when the worker made no progress for three poll intervals", async () => {
  const later = app({ now: () => Date.now() + 60_000 });
  const response = await later.request("/health");
  expect(response.status).toBe(503);
  expect(await response.json()).toMatchObject({ ok: false, reason: expect.stringMatching(/^no progress for \d+ s$/) });
});

/** The app over a snapshot of the worker's status with `changes`, asked at `ageMs` after its last progress. */
async function healthAt(ageMs: number, changes: { pollIntervalMs?: number } = {}): Promise<number> {
  const snapshot = worker.status();
  const status = { ...snapshot, settings: { ...snapshot.settings, ...changes } };
  const frozen = { status: () => status, reload: () => worker.reload(), restart: () => worker.restart() };
  const response = await app({ worker: frozen, now: () => status.lastProgressAt + ageMs }).request("/health");
  return response.status;
}

test("GET /health waits 10 s at least: with a 200 ms poll interval it is 200 at 9.9 s without progress, 503 at 10.1 s", async () => {
  expect(worker.status().settings.pollIntervalMs).toBe(200); // three polls would be 600 ms
  expect(await healthAt(9_900)).toBe(200);
  expect(await healthAt(10_100)).toBe(503);
});

test("GET /health waits three poll intervals when they are longer: with 5 s, 200 at 14.9 s, 503 at 15.1 s", async () => {
  expect(await healthAt(14_900, { pollIntervalMs: 5000 })).toBe(200);
  expect(await healthAt(15_100, { pollIntervalMs: 5000 })).toBe(503);
});

test("GET /status reports version, database, queue depth, counters, settings and their sources", async () => {
  // a request waiting out a retry's backoff: not ready, not held
  await db.sql`insert into net._http_claim (id, method, url, timeout_milliseconds, enqueued_at, enqueued_by, not_before)
               values (999001, 'GET', 'http://localhost/', 1000, now(), current_user, now() + interval '1 hour')`;
  const body = await (await app().request("/status")).json() as Record<string, unknown>;
  expect(body).toMatchObject({
    version: expect.stringMatching(/^\d+\.\d+\.\d+$/),
    pgNetApiVersion: "0.20.4",
    database: "127.0.0.1:5432/test",
    worker: { state: "running", connected: true },
    queue: { ready: 0, readyTruncated: false, claimed: 0, oldestReadySeconds: 0 },
    inFlight: 0,
    counters: { succeeded: 0, failed: 0, timedOut: 0 },
    settings: { batchSize: 200, pollIntervalMs: 200 },
    sources: { batchSize: "default", pollIntervalMs: "flag" },
    lastError: null,
  });
  await forgetRequests(db.sql);
});

test("POST /reload and /restart need the bearer token when one is set", async () => {
  const guarded = app({ token: "t0ken" });
  for (const path of ["/reload", "/restart"]) {
    expect((await guarded.request(path, { method: "POST" })).status).toBe(401);
    const ok = await guarded.request(path, { method: "POST", headers: { authorization: "Bearer t0ken" } });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ ok: true, settings: { batchSize: 200 } });
  }
});

test("GET /health is 503 once the worker has stopped", async () => {
  const stopped = await startWorker(db.url);
  await stopped.stop({ timeout: 100 });
  const response = await app({ worker: stopped }).request("/health");
  expect(response.status).toBe(503);
  expect(await response.json()).toMatchObject({ ok: false, state: "stopped", reason: "worker is stopped" });
});

test("an unknown route is a JSON 404 listing the routes", async () => {
  const response = await app().request("/nope");
  expect(response.status).toBe(404);
  expect(await response.json()).toMatchObject({ ok: false, routes: expect.arrayContaining(["GET /health"]) });
});

test("a Host that could be a rebound DNS name is refused everywhere but /health", async () => {
  for (const path of ["/status", "/nope"]) {
    const response = await app().request(`http://evil.example:8787${path}`);
    expect(response.status).toBe(403);
    expect(await response.json()).toEqual({ ok: false, error: "unknown Host: use the address pgnet listens on" });
  }
  const post = await app().request("http://evil.example:8787/restart", { method: "POST" });
  expect(post.status).toBe(403);
  expect((await app().request("http://evil.example:8787/health")).status).toBe(200);
  // IP literals, localhost and the name pgnet listens on are fine
  for (const host of ["127.0.0.1:8787", "[::1]:8787", "10.1.2.3", "localhost:8787"]) {
    expect({ host, status: (await app().request(`http://${host}/status`)).status }).toEqual({ host, status: 200 });
  }
  expect((await app({ listener: "pgnet.internal" }).request("http://pgnet.internal:8787/status")).status).toBe(200);
});

test("a cross-site POST is refused: an Origin of another site, or Sec-Fetch-Site: cross-site", async () => {
  const crossSite: Record<string, string>[] = [{ origin: "http://evil.example" }, { "sec-fetch-site": "cross-site" }, {
    origin: "null",
  }];
  for (const headers of crossSite) {
    const response = await app().request("http://127.0.0.1:8787/restart", { method: "POST", headers });
    expect({ headers, status: response.status }).toEqual({ headers, status: 403 });
  }
  const same = await app().request("http://127.0.0.1:8787/reload", {
    method: "POST",
    headers: { origin: "http://127.0.0.1:8787" },
  });
  expect(same.status).toBe(200);
});

test("with a token, GET /status needs it too, and a wrong one is refused", async () => {
  const guarded = app({ token: "t0ken" });
  expect((await guarded.request("/status")).status).toBe(401);
  expect((await guarded.request("/status", { headers: { authorization: "Bearer t0kem" } })).status).toBe(401);
  expect((await guarded.request("/status", { headers: { authorization: "Bearer t0ken-and-more" } })).status).toBe(401);
  expect((await guarded.request("/status", { headers: { authorization: "Bearer t0ken" } })).status).toBe(200);
  expect((await guarded.request("/health")).status).toBe(200);
});
