// What pgnet is doing, in numbers: Prometheus metrics (prom-client) fed by events from the worker, the recent
// activity the dashboard draws (per-second outcomes, the slowest hosts, the last failures), and the optional
// failure log. Nothing here holds a header, a body or a query string: hosts, methods, ids, statuses and errors only.

import client from "prom-client";
import { ERRORS } from "./libcurl.ts";
import type { Logger } from "./log.ts";
import type { QueueDepth, ResponseRow } from "./queue.ts";
import { PG_NET_API_VERSION, VERSION } from "./version.ts";

/** How a request ended, as /metrics and the dashboard count it. An HTTP 503 is a response to pg_net, an error here. */
export type Outcome = "success" | "http_4xx" | "http_5xx" | "timeout" | "connection" | "denied" | "invalid";

const NETWORK_ERRORS: ReadonlySet<string> = new Set(Object.values(ERRORS));

export function outcomeOf(row: ResponseRow): Outcome {
  if (row.timed_out) return "timeout";
  if (row.status_code !== null) {
    return row.status_code >= 500 ? "http_5xx" : row.status_code >= 400 ? "http_4xx" : "success";
  }
  const error = row.error_msg ?? "";
  if (error.includes("is denied by pgnet's egress policy")) return "denied";
  // libcurl's texts are what the network did; anything else is about the request itself (a bad header, a limit)
  return NETWORK_ERRORS.has(error) || error.startsWith("Redirect from https") ? "connection" : "invalid";
}

/**
 * An attempt's error text as the dashboard and the failure log show it. Texts about a bad request can quote what
 * the caller queued (`headers must be a JSON object, got {"Authorization": …}`): what follows "got" is left out,
 * as it may be a secret. The response row keeps the whole text for the role that queued it.
 */
export function shownError(row: ResponseRow): string {
  if (row.error_msg === null) return `HTTP ${row.status_code}`;
  return outcomeOf(row) === "invalid" ? row.error_msg.replace(/, got [\s\S]*$/, ", got …") : row.error_msg;
}

/** One attempt that ended, as the worker reports it. */
export interface Finished {
  id: string;
  method: string;
  /** the host (limits.ts's urlHost) */
  host: string;
  /** the --host-limits pattern it matched, or "other": the only per-host label, so its values are bounded */
  hostLabel: string;
  row: ResponseRow;
  durationMs: number;
  attempt: number;
  /** the attempt goes back to the queue for another */
  retried: boolean;
}

export interface Failure {
  /** the database it was queued in */
  database: string;
  id: string;
  method: string;
  host: string;
  outcome: Outcome;
  status: number | null;
  error: string;
  durationMs: number;
  at: string;
}

export interface HostActivity {
  host: string;
  requests: number;
  errors: number;
  meanMs: number;
  maxMs: number;
}

/** The dashboard's data: the last five minutes. */
export interface Activity {
  /** one entry a second, oldest first */
  series: { t: number; ok: number; errors: number }[];
  /** newest first */
  failures: Failure[];
  /** the slowest hosts of the last five to ten minutes, by mean duration */
  hosts: HostActivity[];
}

/** What the gauges read when /metrics is scraped. */
export interface GaugeSources {
  status(): {
    connected: boolean;
    inFlight: number;
    waitingForHost: number;
    pendingWrites: number;
    memory: { used: number; budget: number };
  };
  /** the queue's cheap counts, cached by the caller; throws when the database is unreachable */
  queueDepth(): Promise<QueueDepth>;
}

const SERIES_SECONDS = 300;
const FAILURES_KEPT = 20;
const HOSTS_SHOWN = 5;
const HOSTS_KEPT = 1000;
const HOST_WINDOW_MS = 300_000;

interface HostStats {
  requests: number;
  errors: number;
  totalMs: number;
  maxMs: number;
}

/**
 * The process's Prometheus registry: every series carries a `database` label (the name pgnet serves it under), so
 * one pgnet serving several databases exposes them side by side. The memory gauges are the process's (the memory
 * budget is shared) and carry none.
 */
export class MetricsRegistry {
  readonly registry = new client.Registry();
  readonly finished: client.Counter<"outcome" | "host" | "database">;
  readonly duration: client.Histogram<"database">;
  readonly queued: client.Histogram<"database">;
  readonly retries: client.Counter<"database">;
  readonly deadLetters: client.Counter<"database">;
  readonly statements: client.Counter<"kind" | "result" | "database">;
  readonly statementSeconds: client.Counter<"kind" | "database">;
  readonly reconnects: client.Counter<"database">;
  readonly #sources = new Map<string, GaugeSources>();

  constructor() {
    const registers = [this.registry];
    new client.Gauge({
      name: "pgnet_build_info",
      help: "pgnet's version and the pg_net API it implements; always 1",
      labelNames: ["version", "pg_net_api"],
      registers,
    }).set({ version: VERSION, pg_net_api: PG_NET_API_VERSION }, 1);
    this.finished = new client.Counter({
      name: "pgnet_requests_total",
      help: "attempts that ended, by outcome (success, http_4xx, http_5xx, timeout, connection, denied, invalid) " +
        "and host (the --host-limits pattern it matched, or other)",
      labelNames: ["outcome", "host", "database"],
      registers,
    });
    this.duration = new client.Histogram({
      name: "pgnet_request_duration_seconds",
      help: "how long an attempt took, from its start to its whole response (or its failure)",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      labelNames: ["database"],
      registers,
    });
    this.queued = new client.Histogram({
      name: "pgnet_enqueue_to_stored_seconds",
      help: "from the enqueuing transaction's start (enqueued_at) until the response row was stored",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      labelNames: ["database"],
      registers,
    });
    this.retries = new client.Counter({
      name: "pgnet_retries_total",
      help: "attempts whose outcome put the request back in the queue for another",
      labelNames: ["database"],
      registers,
    });
    this.deadLetters = new client.Counter({
      name: "pgnet_dead_letters_total",
      help: "requests that used up their retries and were kept as dead letters",
      labelNames: ["database"],
      registers,
    });
    // a count and a sum of seconds per kind (rate(sum) / rate(count) is the mean): a histogram per kind would be
    // eight histograms for a figure that is nearly always a millisecond or two
    this.statements = new client.Counter({
      name: "pgnet_statements_total",
      help: "pgnet's statements on the queue, by kind (claim, store, reschedule, renew, release, reap, load) and " +
        "result (ok, error)",
      labelNames: ["kind", "result", "database"],
      registers,
    });
    this.statementSeconds = new client.Counter({
      name: "pgnet_statement_seconds_total",
      help: "time spent in pgnet's statements on the queue, by kind",
      labelNames: ["kind", "database"],
      registers,
    });
    this.reconnects = new client.Counter({
      name: "pgnet_reconnects_total",
      help: "times the worker's LISTEN session reconnected to the database",
      labelNames: ["database"],
      registers,
    });
    const sources = this.#sources;
    // a gauge per database, read from each database's sources when /metrics is scraped
    const perDatabase = (
      name: string,
      help: string,
      read: (s: GaugeSources) => Promise<number | null> | number | null,
    ) =>
      new client.Gauge({
        name,
        help,
        labelNames: ["database"],
        registers,
        async collect() {
          this.reset(); // a database no longer served leaves no stale series
          for (const [database, source] of sources) {
            const value = await read(source);
            if (value !== null) this.set({ database }, value);
          }
        },
      });
    const process = (name: string, help: string, read: (s: ReturnType<GaugeSources["status"]>) => number) =>
      new client.Gauge({
        name,
        help,
        registers,
        collect() {
          const first = sources.values().next().value;
          this.set(first ? read(first.status()) : 0);
        },
      });
    perDatabase("pgnet_up", "1 while the worker is connected to the database", (s) => s.status().connected ? 1 : 0);
    perDatabase("pgnet_in_flight_requests", "requests started and not finished", (s) => s.status().inFlight);
    perDatabase(
      "pgnet_waiting_for_host_requests",
      "claimed requests waiting for their host's limits",
      (s) => s.status().waitingForHost,
    );
    perDatabase("pgnet_pending_writes", "results waiting to be written", (s) => s.status().pendingWrites);
    process("pgnet_memory_used_bytes", "bytes of bodies held", (s) => s.memory.used);
    process("pgnet_memory_budget_bytes", "--memory-budget", (s) => s.memory.budget);
    const depth = (s: GaugeSources) => s.queueDepth().catch(() => null);
    perDatabase(
      "pgnet_queue_ready_requests",
      "requests due and not claimed (counted up to 10,000)",
      async (s) => (await depth(s))?.ready ?? null,
    );
    perDatabase(
      "pgnet_queue_claimed_requests",
      "requests claimed by some worker",
      async (s) => (await depth(s))?.claimed ?? null,
    );
    perDatabase(
      "pgnet_queue_oldest_ready_seconds",
      "how long the oldest due request has waited",
      async (s) => (await depth(s))?.oldestReadySeconds ?? null,
    );
  }

  /** Where a database's gauges read from; null stops its gauges (the database is no longer served). */
  useSources(database: string, sources: GaugeSources | null): void {
    if (sources) this.#sources.set(database, sources);
    else this.#sources.delete(database);
  }

  /** The exposition text for GET /metrics. */
  async render(): Promise<{ contentType: string; text: string }> {
    return { contentType: this.registry.contentType, text: await this.registry.metrics() };
  }
}

/** One database's counters (in the shared registry, under its `database` label) and its recent activity. */
export class Metrics {
  readonly registry: MetricsRegistry;
  readonly database: string;
  readonly #labels: { database: string };
  readonly #now: () => number;
  /** per second: [epoch second, ok, errors] in a ring */
  readonly #series = Array.from({ length: SERIES_SECONDS }, () => ({ t: 0, ok: 0, errors: 0 }));
  readonly #failures: Failure[] = [];
  #hosts = new Map<string, HostStats>();
  #previousHosts = new Map<string, HostStats>();
  #hostsSince: number;

  constructor(options: { now?: () => number; registry?: MetricsRegistry; database?: string } = {}) {
    this.#now = options.now ?? Date.now;
    this.#hostsSince = this.#now();
    this.registry = options.registry ?? new MetricsRegistry();
    this.database = options.database ?? "postgres";
    this.#labels = { database: this.database };
  }

  /** Where the gauges read from (the worker, and the status server's cached queue counts). */
  useSources(sources: GaugeSources | null): void {
    this.registry.useSources(this.database, sources);
  }

  /** An attempt ended. */
  finished(event: Finished): void {
    const outcome = outcomeOf(event.row);
    const r = this.registry;
    r.finished.inc({ outcome, host: event.hostLabel, ...this.#labels });
    r.duration.observe(this.#labels, event.durationMs / 1000);
    if (event.retried) r.retries.inc(this.#labels);
    const ok = outcome === "success";
    const slot = this.#slot();
    if (ok) slot.ok++;
    else slot.errors++;
    this.#hostStats(event.host, event.durationMs, ok);
    if (!ok) {
      this.#failures.unshift({
        database: this.database,
        id: event.id,
        method: event.method,
        host: event.host,
        outcome,
        status: event.row.status_code,
        error: shownError(event.row),
        durationMs: Math.round(event.durationMs * 10) / 10,
        at: new Date(this.#now()).toISOString(),
      });
      this.#failures.length = Math.min(this.#failures.length, FAILURES_KEPT);
    }
  }

  /** A response row was stored, `queuedMs` after its request was enqueued. */
  stored(queuedMs: number, dead: boolean): void {
    this.registry.queued.observe(this.#labels, Math.max(0, queuedMs) / 1000);
    if (dead) this.registry.deadLetters.inc(this.#labels);
  }

  statement(kind: string, seconds: number, ok: boolean): void {
    this.registry.statements.inc({ kind, result: ok ? "ok" : "error", ...this.#labels });
    this.registry.statementSeconds.inc({ kind, ...this.#labels }, seconds);
  }

  reconnected(): void {
    this.registry.reconnects.inc(this.#labels);
  }

  /** The exposition text for GET /metrics: every database's. */
  render(): Promise<{ contentType: string; text: string }> {
    return this.registry.render();
  }

  activity(): Activity {
    const now = Math.floor(this.#now() / 1000);
    const series = [];
    for (let t = now - SERIES_SECONDS + 1; t <= now; t++) {
      const slot = this.#series[t % SERIES_SECONDS]!;
      series.push(slot.t === t ? { t, ok: slot.ok, errors: slot.errors } : { t, ok: 0, errors: 0 });
    }
    this.#rotateHosts();
    const merged = new Map<string, HostStats>();
    for (const map of [this.#previousHosts, this.#hosts]) {
      for (const [host, s] of map) {
        const m = merged.get(host) ?? { requests: 0, errors: 0, totalMs: 0, maxMs: 0 };
        merged.set(host, {
          requests: m.requests + s.requests,
          errors: m.errors + s.errors,
          totalMs: m.totalMs + s.totalMs,
          maxMs: Math.max(m.maxMs, s.maxMs),
        });
      }
    }
    const hosts = [...merged].map(([host, s]) => ({
      host,
      requests: s.requests,
      errors: s.errors,
      meanMs: Math.round((s.totalMs / s.requests) * 10) / 10,
      maxMs: Math.round(s.maxMs * 10) / 10,
    })).sort((a, b) => b.meanMs - a.meanMs).slice(0, HOSTS_SHOWN);
    return { series, failures: [...this.#failures], hosts };
  }

  #slot() {
    const t = Math.floor(this.#now() / 1000);
    const slot = this.#series[t % SERIES_SECONDS]!;
    if (slot.t !== t) Object.assign(slot, { t, ok: 0, errors: 0 });
    return slot;
  }

  #hostStats(host: string, ms: number, ok: boolean): void {
    this.#rotateHosts();
    let s = this.#hosts.get(host);
    if (!s) {
      if (this.#hosts.size >= HOSTS_KEPT) return; // a flood of distinct hosts: the first thousand are enough
      this.#hosts.set(host, s = { requests: 0, errors: 0, totalMs: 0, maxMs: 0 });
    }
    s.requests++;
    if (!ok) s.errors++;
    s.totalMs += ms;
    s.maxMs = Math.max(s.maxMs, ms);
  }

  /** Host figures cover the current five minutes and the five before. */
  #rotateHosts(): void {
    if (this.#now() - this.#hostsSince < HOST_WINDOW_MS) return;
    this.#previousHosts = this.#now() - this.#hostsSince < 2 * HOST_WINDOW_MS ? this.#hosts : new Map();
    this.#hosts = new Map();
    this.#hostsSince = this.#now();
  }
}

/** Several databases' activity as one: outcomes added up per second, the newest failures, the slowest hosts. */
export function mergeActivity(list: Activity[]): Activity {
  if (list.length === 1) return list[0]!;
  const series = (list[0]?.series ?? []).map((point, i) => {
    let ok = 0, errors = 0;
    for (const a of list) {
      ok += a.series[i]?.ok ?? 0;
      errors += a.series[i]?.errors ?? 0;
    }
    return { t: point.t, ok, errors };
  });
  const failures = list.flatMap((a) => a.failures).sort((a, b) => b.at.localeCompare(a.at)).slice(0, FAILURES_KEPT);
  // a host that several databases call is one host: its figures are added up (each database's top hosts only)
  const byHost = new Map<string, HostActivity>();
  for (const h of list.flatMap((a) => a.hosts)) {
    const m = byHost.get(h.host);
    if (!m) byHost.set(h.host, { ...h });
    else {
      const requests = m.requests + h.requests;
      m.meanMs = Math.round(((m.meanMs * m.requests + h.meanMs * h.requests) / requests) * 10) / 10;
      m.requests = requests;
      m.errors += h.errors;
      m.maxMs = Math.max(m.maxMs, h.maxMs);
    }
  }
  const hosts = [...byHost.values()].sort((a, b) => b.meanMs - a.meanMs).slice(0, HOSTS_SHOWN);
  return { series, failures, hosts };
}

/**
 * --log-failures: one line per failed attempt (status 400 or more, or no response), with its id, method, host,
 * status or error and duration; never headers, bodies or query strings. At most `perSecond` lines a second (and a
 * burst of as many); what is held back is counted and said in the next line that gets through.
 */
export class FailureLog {
  readonly #log: Logger;
  readonly #perSecond: number;
  readonly #now: () => number;
  #tokens: number;
  #at: number;
  #suppressed = 0;

  constructor(log: Logger, perSecond = 10, now = Date.now) {
    this.#log = log;
    this.#perSecond = perSecond;
    this.#tokens = perSecond;
    this.#at = now();
    this.#now = now;
  }

  attempt(event: Finished): void {
    const outcome = outcomeOf(event.row);
    if (outcome === "success") return;
    const now = this.#now();
    this.#tokens = Math.min(this.#perSecond, this.#tokens + (now - this.#at) * this.#perSecond / 1000);
    this.#at = now;
    if (this.#tokens < 1) {
      this.#suppressed++;
      return;
    }
    this.#tokens--;
    const fields: Record<string, unknown> = {
      id: event.id,
      method: event.method,
      host: event.host,
      outcome,
      ...(event.row.status_code !== null ? { status: event.row.status_code } : { error: shownError(event.row) }),
      durationMs: Math.round(event.durationMs * 10) / 10,
      attempt: event.attempt,
      ...(event.retried ? { retried: true } : {}),
      ...(this.#suppressed > 0 ? { suppressedBefore: this.#suppressed } : {}),
    };
    this.#suppressed = 0;
    this.#log.warn("request failed", fields);
  }
}
