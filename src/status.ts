// The status server: health for load balancers, status JSON, reload and restart. A pure hono app factory.

import { Hono } from "hono";
import { coerceError } from "./errors.ts";
import type { QueueDepth } from "./queue.ts";
import type { WorkerStatus } from "./worker.ts";
import { PG_NET_API_VERSION, VERSION } from "./version.ts";

export interface StatusDeps {
  worker: {
    status(): WorkerStatus;
    reload(): Promise<void>;
    restart(): Promise<void>;
  };
  /** the queue's cheap counts (throws when the database is unreachable) */
  queueDepth(): Promise<QueueDepth>;
  /** where the worker connects, without credentials */
  database: string;
  /** when set, POST routes need `Authorization: Bearer <token>` */
  token?: string;
  now?: () => number;
}

/**
 * How stale the worker's last successful statement may be before /health fails. The worker runs at least
 * one statement per poll interval while connected, so three missed polls (and 10 s at least) mean trouble.
 */
export function healthWindowMs(pollIntervalMs: number): number {
  return Math.max(3 * pollIntervalMs, 10_000);
}

export function createStatusApp(deps: StatusDeps): Hono {
  const app = new Hono();
  const now = deps.now ?? Date.now;

  app.get("/health", (c) => {
    const s = deps.worker.status();
    const age = now() - s.lastProgressAt;
    let reason: string | null = null;
    if (s.state !== "running") reason = `worker is ${s.state}`;
    else if (!s.connected) reason = "not connected to the database";
    else if (s.blocked) reason = `blocked for ${Math.round((now() - s.blocked.since) / 1000)} s: ${s.blocked.message}`;
    else if (age > healthWindowMs(s.settings.pollIntervalMs)) reason = `no progress for ${Math.round(age / 1000)} s`;
    const body = {
      ok: reason === null,
      state: s.state,
      connected: s.connected,
      inFlight: s.inFlight,
      ...(reason ? { reason } : {}),
    };
    return c.json(body, reason === null ? 200 : 503);
  });

  // one reading a second at most, however often /status is asked
  let cached: { at: number; depth: Promise<QueueDepth> } | null = null;
  const queueDepth = () => {
    if (!cached || now() - cached.at >= 1000) cached = { at: now(), depth: deps.queueDepth() };
    return cached.depth;
  };

  app.get("/status", async (c) => {
    const s = deps.worker.status();
    let queue: QueueDepth | null = null;
    let queueError: string | null = null;
    try {
      queue = await queueDepth();
    } catch (error) {
      queueError = coerceError(error).message;
      cached = null;
    }
    return c.json({
      version: VERSION,
      pgNetApiVersion: PG_NET_API_VERSION,
      database: deps.database,
      worker: {
        id: s.workerId,
        state: s.state,
        connected: s.connected,
        lastProgressAt: new Date(s.lastProgressAt).toISOString(),
      },
      queue,
      ...(queueError ? { queueError } : {}),
      inFlight: s.inFlight,
      pendingWrites: s.pendingWrites,
      memory: s.memory,
      blocked: s.blocked ? { message: s.blocked.message, since: new Date(s.blocked.since).toISOString() } : null,
      counters: s.counters,
      settings: s.settings,
      sources: s.sources,
      lastError: s.lastError ? { message: s.lastError.message, at: new Date(s.lastError.at).toISOString() } : null,
    });
  });

  const authorized = (header: string | undefined) => !deps.token || header === `Bearer ${deps.token}`;
  for (const [path, action] of [["/reload", "reload"], ["/restart", "restart"]] as const) {
    app.post(path, async (c) => {
      if (!authorized(c.req.header("authorization"))) return c.json({ ok: false, error: "unauthorized" }, 401);
      try {
        await deps.worker[action]();
        return c.json({ ok: true, settings: deps.worker.status().settings });
      } catch (error) {
        return c.json({ ok: false, error: coerceError(error).message }, 500);
      }
    });
  }

  app.notFound((c) =>
    c.json(
      { ok: false, error: "not found", routes: ["GET /health", "GET /status", "POST /reload", "POST /restart"] },
      404,
    )
  );
  return app;
}
