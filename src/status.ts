// The status server: health for load balancers, status JSON, Prometheus metrics, the dashboard page, reload and
// restart. A pure hono app factory.

import { Hono } from "hono";
import { createHash, timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import uplotCss from "uplot/dist/uPlot.min.css" with { type: "text" };
import uplotJs from "uplot/dist/uPlot.iife.min.js" with { type: "text" };
import dashboard from "./dashboard.html" with { type: "text" };
import { coerceError } from "./errors.ts";
import { mergeActivity, Metrics, type MetricsRegistry } from "./metrics.ts";
import { cachedDepth, type QueueDepth } from "./queue.ts";
import type { WorkerStatus } from "./worker.ts";
import { PG_NET_API_VERSION, VERSION } from "./version.ts";

/** A database the status server reports on. */
export interface StatusDatabase {
  /** its name in /status and the `database` label */
  name: string;
  /** host:port/database, without credentials */
  where: string;
  worker: { status(): WorkerStatus };
  metrics: Metrics;
  /** the queue's cheap counts (throws when the database is unreachable) */
  queueDepth(): Promise<QueueDepth>;
  /** set while its first connection keeps failing: its worker is not running */
  pending?: { message: string; since: number } | null;
}

/** What the status server serves: every database of the process (fleet.ts), or one worker. */
export type StatusDeps =
  & Common
  & ({ databases(): StatusDatabase[]; reload(): Promise<void>; restart(): Promise<void> } | {
    worker: {
      status(): WorkerStatus;
      reload(): Promise<void>;
      restart(): Promise<void>;
    };
    /** the queue's cheap counts (throws when the database is unreachable) */
    queueDepth(): Promise<QueueDepth>;
    /** where the worker connects, without credentials */
    database: string;
    /** the worker's counters and recent activity (GET /metrics, the dashboard); empty ones when not given */
    metrics?: Metrics;
  });

interface Common {
  /** when set, GET /status and the POST routes need `Authorization: Bearer <token>` */
  token?: string;
  /** the address or name the server listens on (--status-host): a Host header naming it is accepted */
  listener?: string;
  /** every database's series (/metrics), also while none is served (--all-databases); the first's when not given */
  registry?: MetricsRegistry;
  /** the shared window, shown in /status */
  window?: { capacity: number; used: number };
  now?: () => number;
}

/** The dashboard's page and chart library: no data in them, so no token needed to load them. */
const STATIC = new Set(["/", "/assets/uplot.js", "/assets/uplot.css"]);

const digest = (text: string) => createHash("sha256").update(text).digest();

/**
 * Whether a Host header may reach the routes beyond /health. An IP literal or localhost cannot be a DNS name an
 * attacker rebinds to 127.0.0.1 (a page in a browser on this host reading /status), and neither can the name
 * pgnet was told to listen on; any other name is refused.
 */
export function acceptableHost(host: string | undefined, listener: string | undefined): boolean {
  if (!host) return false;
  const name = (host.startsWith("[") ? host.slice(1, host.indexOf("]")) : host.replace(/:\d+$/, "")).toLowerCase();
  return isIP(name) !== 0 || name === "localhost" || (listener !== undefined && name === listener.toLowerCase());
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
  const served = "databases" in deps ? deps : single(deps);
  const expected = deps.token === undefined ? null : digest(`Bearer ${deps.token}`);
  const authorized = (header: string | undefined) =>
    expected === null || (header !== undefined && timingSafeEqual(digest(header), expected));

  app.use("*", async (c, next) => {
    if (c.req.path === "/health") return await next();
    if (!acceptableHost(new URL(c.req.url).host, deps.listener)) {
      return c.json({ ok: false, error: "unknown Host: use the address pgnet listens on" }, 403);
    }
    if (!STATIC.has(c.req.path) && !authorized(c.req.header("authorization"))) {
      return c.json({ ok: false, error: "unauthorized" }, 401);
    }
    await next();
  });

  const page = (body: string, type: string) => (c: { body(b: string, s: 200, h: Record<string, string>): Response }) =>
    c.body(body, 200, {
      "content-type": type,
      "cache-control": "no-cache",
      "content-security-policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' " +
        "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
      "x-content-type-options": "nosniff",
    });
  app.get("/", page(dashboard as unknown as string, "text/html; charset=utf-8"));
  app.get("/assets/uplot.js", page(uplotJs, "text/javascript; charset=utf-8"));
  app.get("/assets/uplot.css", page(uplotCss, "text/css; charset=utf-8"));

  app.get("/metrics", async (c) => {
    const first = served.databases()[0];
    const registry = deps.registry ?? first?.metrics.registry ?? new Metrics().registry;
    const { contentType, text } = await registry.render();
    return c.body(text, 200, { "content-type": contentType });
  });

  /** Why a database is not healthy, or null. */
  const unhealthy = (d: StatusDatabase): string | null => {
    if (d.pending) return `cannot connect: ${d.pending.message}`;
    const s = d.worker.status();
    const age = now() - s.lastProgressAt;
    if (s.state !== "running") return `worker is ${s.state}`;
    if (!s.connected) return "not connected to the database";
    if (s.blocked) return `blocked for ${Math.round((now() - s.blocked.since) / 1000)} s: ${s.blocked.message}`;
    if (age > healthWindowMs(s.settings.pollIntervalMs)) return `no progress for ${Math.round(age / 1000)} s`;
    return null;
  };

  // healthy while at least one database served is (or none is served yet, with --all-databases): a database that
  // is down is pgnet's to wait for, and restarting pgnet would not bring it back
  app.get("/health", (c) => {
    const list = served.databases();
    const reasons = list.map(unhealthy);
    const ok = list.length === 0 || reasons.some((r) => r === null);
    const body: Record<string, unknown> = { ok };
    if (list.length === 1 && !list[0]!.pending) {
      const s = list[0]!.worker.status();
      Object.assign(body, { state: s.state, connected: s.connected, inFlight: s.inFlight });
      if (reasons[0]) body.reason = reasons[0];
    }
    body.databases = list.map((d, i) => ({
      name: d.name,
      ok: reasons[i] === null,
      ...(reasons[i] ? { reason: reasons[i] } : {}),
    }));
    return c.json(body, ok ? 200 : 503);
  });

  app.get("/status", async (c) => {
    const list = served.databases();
    const entries = await Promise.all(list.map((d) => databaseStatus(d)));
    const running = list.filter((d) => !d.pending).map((d) => d.worker.status());
    const sum = (key: "inFlight" | "waitingForHost" | "pendingWrites") => running.reduce((n, s) => n + s[key], 0);
    const counters = running.reduce((total, s) => {
      for (const [k, v] of Object.entries(s.counters)) total[k] = (total[k] ?? 0) + v;
      return total;
    }, {} as Record<string, number>);
    const queues = entries.map((e) => e.queue).filter((q): q is QueueDepth => q !== null);
    const queue = queues.length === 0 ? null : {
      ready: queues.reduce((n, q) => n + q.ready, 0),
      readyTruncated: queues.some((q) => q.readyTruncated),
      claimed: queues.reduce((n, q) => n + q.claimed, 0),
      oldestReadySeconds: Math.max(...queues.map((q) => q.oldestReadySeconds)),
    };
    const queueErrors = entries.filter((e) => e.queueError).map((e) => `${e.name}: ${e.queueError}`);
    const states = new Set(entries.map((e) => e.state));
    const one = list.length === 1 ? running[0] : undefined;
    const first = running[0];
    const lastErrors = running.map((s) => s.lastError).filter((e) => e !== null).sort((a, b) => b.at - a.at);
    const blocked = running.map((s) => s.blocked).find((b) => b !== null) ?? null;
    return c.json({
      version: VERSION,
      pgNetApiVersion: PG_NET_API_VERSION,
      database: list.length === 1 ? list[0]!.where : `${list.length} databases`,
      worker: one
        ? { id: one.workerId, state: one.state, connected: one.connected, lastProgressAt: iso(one.lastProgressAt) }
        : {
          state: states.size === 1 ? [...states][0] : states.size === 0 ? "running" : "mixed",
          connected: entries.every((e) => e.connected),
        },
      queue,
      ...(queueErrors.length > 0
        ? {
          queueError: queueErrors.length === 1 && list.length === 1 ? entries[0]!.queueError : queueErrors.join("; "),
        }
        : {}),
      inFlight: sum("inFlight"),
      waitingForHost: sum("waitingForHost"),
      pendingWrites: sum("pendingWrites"),
      memory: first?.memory ?? null,
      ...(deps.window ? { window: { capacity: deps.window.capacity, used: deps.window.used } } : {}),
      egress: first?.egress ?? null,
      blocked: blocked ? { message: blocked.message, since: iso(blocked.since) } : null,
      counters,
      ...(one ? { settings: one.settings, sources: one.sources } : {}),
      lastError: lastErrors[0] ? { message: lastErrors[0].message, at: iso(lastErrors[0].at) } : null,
      databases: entries,
      activity: mergeActivity(list.map((d) => d.metrics.activity())),
    });
  });

  for (const [path, action] of [["/reload", "reload"], ["/restart", "restart"]] as const) {
    app.post(path, async (c) => {
      // a web page cannot make a browser send these: refuse what a browser sends for a cross-site form or fetch
      const origin = c.req.header("origin");
      const site = c.req.header("sec-fetch-site");
      if ((origin !== undefined && origin !== new URL(c.req.url).origin) || site === "cross-site") {
        return c.json({ ok: false, error: "cross-site requests are refused" }, 403);
      }
      try {
        await served[action]();
        const list = served.databases().filter((d) => !d.pending);
        if (list.length === 1) return c.json({ ok: true, settings: list[0]!.worker.status().settings });
        return c.json({
          ok: true,
          databases: list.map((d) => ({ name: d.name, settings: d.worker.status().settings })),
        });
      } catch (error) {
        return c.json({ ok: false, error: coerceError(error).message }, 500);
      }
    });
  }

  app.notFound((c) =>
    c.json(
      {
        ok: false,
        error: "not found",
        routes: ["GET /", "GET /health", "GET /status", "GET /metrics", "POST /reload", "POST /restart"],
      },
      404,
    )
  );
  return app;
}

const iso = (ms: number) => new Date(ms).toISOString();

/** One worker as the only database served. */
function single(deps: Extract<StatusDeps, { worker: unknown }>) {
  const metrics = deps.metrics ?? new Metrics();
  const database: StatusDatabase = {
    name: deps.database.slice(deps.database.lastIndexOf("/") + 1),
    where: deps.database,
    worker: deps.worker,
    metrics,
    queueDepth: cachedDepth(deps.queueDepth),
  };
  metrics.useSources({ status: () => deps.worker.status(), queueDepth: database.queueDepth });
  return { databases: () => [database], reload: () => deps.worker.reload(), restart: () => deps.worker.restart() };
}

/** One database's part of /status. */
async function databaseStatus(d: StatusDatabase) {
  if (d.pending) {
    return {
      name: d.name,
      database: d.where,
      state: "unreachable",
      connected: false,
      error: { message: d.pending.message, since: iso(d.pending.since) },
      queue: null as QueueDepth | null,
      queueError: d.pending.message as string | undefined,
    };
  }
  const s = d.worker.status();
  let queue: QueueDepth | null = null;
  let queueError: string | undefined;
  try {
    queue = await d.queueDepth();
  } catch (error) {
    queueError = coerceError(error).message;
  }
  return {
    name: d.name,
    database: d.where,
    state: s.state,
    connected: s.connected,
    lastProgressAt: iso(s.lastProgressAt),
    queue,
    ...(queueError ? { queueError } : {}),
    inFlight: s.inFlight,
    waitingForHost: s.waitingForHost,
    pendingWrites: s.pendingWrites,
    blocked: s.blocked ? { message: s.blocked.message, since: iso(s.blocked.since) } : null,
    counters: s.counters,
    settings: s.settings,
    sources: s.sources,
    lastError: s.lastError ? { message: s.lastError.message, at: iso(s.lastError.at) } : null,
  };
}
