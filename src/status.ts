// The status server: health for load balancers, status JSON, Prometheus metrics, the dashboard page, reload and
// restart. A pure hono app factory.

import { Hono } from "hono";
import { createHash, timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import uplotCss from "uplot/dist/uPlot.min.css" with { type: "text" };
import uplotJs from "uplot/dist/uPlot.iife.min.js" with { type: "text" };
import dashboard from "./dashboard.html" with { type: "text" };
import { coerceError } from "./errors.ts";
import { Metrics } from "./metrics.ts";
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
  /** the worker's counters and recent activity (GET /metrics, the dashboard); empty ones when not given */
  metrics?: Metrics;
  /** when set, GET /status and the POST routes need `Authorization: Bearer <token>` */
  token?: string;
  /** the address or name the server listens on (--status-host): a Host header naming it is accepted */
  listener?: string;
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
  const metrics = deps.metrics ?? new Metrics();
  const expected = deps.token === undefined ? null : digest(`Bearer ${deps.token}`);
  // compared as digests in constant time: the time taken says nothing about how much of a guess was right
  const authorized = (header: string | undefined) =>
    expected === null || (header !== undefined && timingSafeEqual(digest(header), expected));

  // /health stays open to load balancers, whatever Host they send; the rest needs a Host that cannot be rebound
  // and, with a token, the token (but for the dashboard's page and its chart library, which hold no data: the page
  // sends the token from its URL's #fragment, which browsers never send to the server)
  app.use("*", async (c, next) => {
    if (c.req.path === "/health") return await next();
    // the runtime builds the request's URL from its Host header
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
      // everything the page loads comes from pgnet itself
      "content-security-policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' " +
        "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
      "x-content-type-options": "nosniff",
    });
  // Bun's types take an .html import for one of its HTML bundles; with { type: "text" } it is the text, in Deno too
  app.get("/", page(dashboard as unknown as string, "text/html; charset=utf-8"));
  app.get("/assets/uplot.js", page(uplotJs, "text/javascript; charset=utf-8"));
  app.get("/assets/uplot.css", page(uplotCss, "text/css; charset=utf-8"));

  app.get("/metrics", async (c) => {
    const { contentType, text } = await metrics.render();
    return c.body(text, 200, { "content-type": contentType });
  });

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

  // one reading a second at most, however often /status and /metrics are asked
  let cached: { at: number; depth: Promise<QueueDepth> } | null = null;
  const queueDepth = () => {
    if (!cached || now() - cached.at >= 1000) {
      const depth = deps.queueDepth();
      depth.catch(() => (cached = null));
      cached = { at: now(), depth };
    }
    return cached.depth;
  };
  metrics.useSources({ status: () => deps.worker.status(), queueDepth });

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
      waitingForHost: s.waitingForHost,
      pendingWrites: s.pendingWrites,
      memory: s.memory,
      egress: s.egress,
      blocked: s.blocked ? { message: s.blocked.message, since: new Date(s.blocked.since).toISOString() } : null,
      counters: s.counters,
      settings: s.settings,
      sources: s.sources,
      lastError: s.lastError ? { message: s.lastError.message, at: new Date(s.lastError.at).toISOString() } : null,
      activity: metrics.activity(),
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
        await deps.worker[action]();
        return c.json({ ok: true, settings: deps.worker.status().settings });
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
