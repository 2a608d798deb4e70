// One database's pump: claims requests under a lease when slots are free, runs them in a sliding window,
// hands results to the writer, and stops in order.

import { randomUUID } from "node:crypto";
import { type ResolvedSettings, resolveSettings, type SettingValues, type WorkerSettings } from "./config.ts";
import { connect, readDatabaseSettings, type Sql, type Target } from "./db.ts";
import { coerceError, errorCode } from "./errors.ts";
import { performRequest } from "./http.ts";
import { CONTROL_CHANNEL, Listener, WAKE_CHANNEL } from "./listener.ts";
import type { Logger } from "./log.ts";
import { Queue, type QueuedRequest, type ResponseRow } from "./queue.ts";
import { backoffMs, Timers } from "./timers.ts";
import { SCHEMA_MISSING, Writer } from "./writer.ts";

export interface WorkerOptions {
  target: Target;
  logger: Logger;
  /** settings given as flags (highest precedence) */
  flags?: SettingValues;
  /** the environment read for PGNET_* settings */
  env?: Record<string, string | undefined>;
}

export type WorkerState = "starting" | "running" | "reconnecting" | "stopping" | "stopped";

export interface WorkerStatus {
  workerId: string;
  state: WorkerState;
  connected: boolean;
  inFlight: number;
  pendingWrites: number;
  /** results stored since start, by outcome */
  counters: { succeeded: number; failed: number; timedOut: number; claimed: number };
  settings: WorkerSettings;
  sources: ResolvedSettings["sources"];
  /** Date.now() of the last successful statement */
  lastProgressAt: number;
  lastError: { message: string; at: number } | null;
}

/** The database side of a worker: a pool for its statements and the LISTEN session. Replaced on restart. */
interface Connections {
  sql: Sql;
  queue: Queue;
  listener: Listener;
}

export class Worker {
  readonly id = randomUUID();
  readonly #options: WorkerOptions;
  readonly #log: Logger;
  readonly #timers = new Timers();
  readonly #writer: Writer;
  #resolved!: ResolvedSettings;
  #state: WorkerState = "starting";
  #db: Connections | null = null;
  #inFlight = new Set<string>();
  #pumping = false;
  #wanted = false;
  #backlog = false;
  #failures = 0;
  #stopping: Promise<void> | null = null;
  #restarting: Promise<void> | null = null;
  #counters = { succeeded: 0, failed: 0, timedOut: 0, claimed: 0 };
  #lastProgressAt = Date.now();
  #lastError: WorkerStatus["lastError"] = null;
  #schemaMissing = false;

  constructor(options: WorkerOptions) {
    this.#options = options;
    this.#log = options.logger;
    this.#writer = new Writer({
      store: (results) => this.#db!.queue.store(results),
      onFail: (message, error) => this.#fail(message, error),
      onStored: () => this.#progress(),
    });
  }

  get settings(): WorkerSettings {
    return this.#resolved.settings;
  }

  /** requests in flight at most */
  get #window(): number {
    return this.settings.concurrency;
  }

  /** Connects, reads settings, starts listening and polling. Rejects if the first connection fails. */
  async start(): Promise<void> {
    await this.#loadSettings();
    this.#db = await this.#connect();
    this.#state = "running";
    this.#kick(); // the listener's catch-up ran before the connections were in place
    this.#schedulePoll();
    this.#scheduleLeaseRenewal();
    this.#log.info("worker started", { worker: this.id, ...this.settings });
  }

  /** Re-reads settings: flags, environment, and pg_net.* as a new session sees them. */
  async reload(): Promise<void> {
    await this.#loadSettings();
    this.#log.info("settings reloaded", { ...this.settings });
    this.#kick();
  }

  /** Re-reads settings and replaces the connections. In-flight requests carry on. One restart at a time. */
  restart(): Promise<void> {
    if (this.#stopping) return Promise.resolve();
    this.#restarting ??= this.#reconnect().finally(() => {
      this.#restarting = null;
    });
    return this.#restarting;
  }

  async #reconnect(): Promise<void> {
    this.#log.info("worker restarting");
    await this.#loadSettings();
    if (this.#stopping) return; // shutdown closes the current connections
    const old = this.#db;
    this.#db = await this.#connect();
    this.#kick();
    await closeConnections(old);
    this.#log.info("worker restarted", { ...this.settings });
  }

  /**
   * Stops claiming, lets in-flight requests finish for up to `timeout` ms, stores their results, gives
   * unfinished requests back to the queue and closes the connections. A second call returns the same promise.
   */
  stop(options: { timeout?: number } = {}): Promise<void> {
    this.#stopping ??= this.#shutdown(options.timeout ?? this.settings.shutdownTimeoutMs);
    return this.#stopping;
  }

  status(): WorkerStatus {
    const connected = this.#db?.listener.listening ?? false;
    return {
      workerId: this.id,
      state: this.#state === "running" && !connected ? "reconnecting" : this.#state,
      connected,
      inFlight: this.#inFlight.size,
      pendingWrites: this.#writer.pending.length,
      counters: { ...this.#counters },
      settings: { ...this.settings },
      sources: { ...this.#resolved.sources },
      lastProgressAt: this.#lastProgressAt,
      lastError: this.#lastError,
    };
  }

  /** Resolves once nothing is in flight and every result is stored (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.#inFlight.size > 0 || this.#writer.busy) {
      if (this.#writer.busy) await this.#writer.drained();
      else await new Promise((r) => setTimeout(r, 10));
    }
  }

  async #loadSettings(): Promise<void> {
    const probe = connect(this.#options.target, { max: 1, connect_timeout: 10 });
    try {
      const database = await readDatabaseSettings(probe);
      this.#resolved = resolveSettings({
        flags: this.#options.flags ?? {},
        env: this.#options.env ?? {},
        database,
        onInvalidDatabaseValue: (name, value, reason, fallback) =>
          this.#log.warn(`invalid ${name}, using the default`, { value, reason, default: fallback }),
      });
    } finally {
      await probe.end({ timeout: 1 }).catch(() => {});
    }
  }

  async #connect(): Promise<Connections> {
    const { target } = this.#options;
    const sql = connect(target, { max: 4, connect_timeout: 10, idle_timeout: 60 });
    const listener = new Listener({
      target,
      timers: this.#timers,
      onNotify: (channel, payload) => this.#onNotify(channel, payload),
      onListen: () => {
        this.#progress();
        // catch up: requests queued while nobody was listening, and rows inserted directly into the queue
        this.#kick();
      },
      onReconnect: () => this.#log.info("reconnected"),
      onFail: (message, error) => this.#fail(message, error),
    });
    try {
      await listener.start();
    } catch (error) {
      await closeConnections({ sql, listener, queue: null as never });
      throw error;
    }
    return { sql, queue: new Queue(sql, this.id), listener };
  }

  #onNotify(channel: string, payload: string): void {
    if (channel === WAKE_CHANNEL) this.#kick();
    else if (channel === CONTROL_CHANNEL && payload === "restart") {
      this.restart().catch((error) => this.#fail("restart failed", error));
    }
  }

  /** Asks for a claim pass; passes never overlap, and one asked for during a pass runs right after it. */
  #kick(): void {
    this.#wanted = true;
    if (!this.#pumping && !this.#stopping && this.#db) void this.#pump();
  }

  async #pump(): Promise<void> {
    this.#pumping = true;
    try {
      while (this.#wanted && !this.#stopping) {
        this.#wanted = false;
        // claim while slots are free and claims come back full (more may be waiting)
        while (!this.#stopping) {
          const free = this.#window - this.#inFlight.size;
          if (free <= 0) {
            this.#backlog = true; // a finishing request kicks again
            break;
          }
          const limit = Math.min(free, this.settings.batchSize);
          const { requests, expired } = await this.#db!.queue.claim(limit, this.settings);
          this.#progress();
          this.#counters.claimed += requests.length;
          for (const request of requests) this.#dispatch(request);
          if (expired >= this.settings.batchSize) this.#wanted = true; // more responses to expire
          this.#backlog = requests.length === limit;
          if (!this.#backlog) break;
        }
      }
      this.#failures = 0;
      if (this.#schemaMissing) {
        this.#schemaMissing = false;
        this.#log.info("schema net is installed again: resuming");
      }
    } catch (error) {
      if (SCHEMA_MISSING.has(errorCode(error) ?? "")) {
        // not a fault of ours: say it once, then look again at each poll
        if (!this.#schemaMissing) {
          this.#schemaMissing = true;
          this.#fail("schema net is missing or incomplete: idling until it is installed (pgnet install)", error);
        }
      } else {
        this.#fail("cannot claim requests", error);
        this.#timers.after(backoffMs(this.#failures++), () => this.#kick());
      }
    } finally {
      this.#pumping = false;
    }
  }

  #dispatch(request: QueuedRequest): void {
    this.#inFlight.add(request.id);
    void performRequest(request, { maxResponseBytes: this.settings.maxResponseBytes }).then((result) => {
      if (!this.#inFlight.delete(request.id)) return; // given back at shutdown
      this.#count(result);
      this.#writer.push(result);
      if (this.#backlog) this.#kick();
    });
  }

  #count(result: ResponseRow): void {
    if (result.timed_out) this.#counters.timedOut++;
    else if (result.error_msg !== null) this.#counters.failed++;
    else this.#counters.succeeded++;
  }

  /** Extends the lease of everything this worker holds, so long requests are not claimed twice. */
  #scheduleLeaseRenewal(): void {
    this.#timers.after(this.settings.leaseMs / 3, async () => {
      const ids = [...this.#inFlight, ...this.#writer.pending.map((r) => r.id)];
      if (ids.length > 0 && this.#db) {
        await this.#db.queue.renew(ids, this.settings.leaseMs).catch((error) =>
          this.#fail("cannot renew leases", error)
        );
      }
      if (!this.#stopping) this.#scheduleLeaseRenewal();
    });
  }

  #schedulePoll(): void {
    this.#timers.after(this.settings.pollIntervalMs, () => {
      this.#kick();
      if (!this.#stopping) this.#schedulePoll();
    });
  }

  async #shutdown(timeoutMs: number): Promise<void> {
    this.#state = "stopping";
    this.#timers.clear();
    const deadline = Date.now() + timeoutMs;
    while (this.#inFlight.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, Math.min(20, deadline - Date.now())));
    }
    await this.#restarting?.catch(() => {}); // so no connection it opens outlives the shutdown
    const unfinished = [...this.#inFlight];
    this.#inFlight.clear();
    await this.#writer.stop();
    const db = this.#db;
    if (unfinished.length > 0 && db) {
      // give them back now rather than when the lease ends; they may have been sent: at-least-once
      await db.queue.release(unfinished).catch((error) => this.#fail("cannot release unfinished requests", error));
      this.#log.warn("unfinished requests returned to the queue", { count: unfinished.length });
    }
    this.#db = null;
    await closeConnections(db);
    this.#state = "stopped";
    this.#log.info("worker stopped", { lost: this.#writer.lost });
  }

  #progress(): void {
    this.#lastProgressAt = Date.now();
  }

  #fail(message: string, error: unknown): void {
    const e = coerceError(error);
    this.#lastError = { message: `${message}: ${e.message}`, at: Date.now() };
    this.#log.error(message, { error: e, code: errorCode(error) });
  }
}

async function closeConnections(db: Connections | null): Promise<void> {
  if (!db) return;
  await Promise.all([db.listener.close(), db.sql.end({ timeout: 5 }).catch(() => {})]);
}
