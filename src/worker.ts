// One database's pump: claims requests under a lease when slots are free, runs them in a sliding window,
// hands results to the writer, and stops in order.

import { randomUUID } from "node:crypto";
import { Hold, hostKey, MemoryBudget, REQUEST_RESERVE, ResponseSizes } from "./budget.ts";
import { type ResolvedSettings, resolveSettings, type SettingValues, type WorkerSettings } from "./config.ts";
import { QueueCursor, REWIND_POLLS } from "./cursor.ts";
import { connect, readDatabaseSettings, type Sql, type Target } from "./db.ts";
import { coerceError, errorCode } from "./errors.ts";
import { EgressPolicy, guardedResolve, proxiedCheck } from "./egress.ts";
import { type Agents, failure, performRequest, type Proxy, type Resolve, systemResolve } from "./http.ts";
import { HostLimits, type HostLimitSettings, ruleFor } from "./limits.ts";
import { CONTROL_CHANNEL, Listener, WAKE_CHANNEL } from "./listener.ts";
import type { Logger } from "./log.ts";
import { FailureLog, type Finished, Metrics } from "./metrics.ts";
import {
  type Claimed,
  PLAN_SETTINGS,
  Queue,
  QUEUE_SCAN_ROWS,
  type QueueDepth,
  readQueueDepth,
  type ResponseRow,
} from "./queue.ts";
import { releaseMemory } from "./runtime.ts";
import { decide, parseRetryPolicy, type RetryPolicy } from "./retry.ts";
import { WORKER_ROLE } from "./version.ts";
import { backoffMs, Timers } from "./timers.ts";
import { SCHEMA_MISSING, Writer } from "./writer.ts";
import { RequestWindow, type Share } from "./window.ts";

export interface WorkerOptions {
  target: Target;
  logger: Logger;
  /** settings given as flags (highest precedence) */
  flags?: SettingValues;
  /** the environment read for PGNET_* settings */
  env?: Record<string, string | undefined>;
  /** shared by every worker of the process; one of its own (--memory-budget) when not given */
  budget?: MemoryBudget;
  /** where requests may go; the default preset when not given */
  egress?: EgressPolicy;
  /** follow redirects from https to http */
  allowInsecureRedirects?: boolean;
  /** how names become addresses (the system resolver); the egress policy checks whatever it returns */
  resolve?: Resolve;
  /** connection pools (--ca-file adds certificate authorities to them) */
  agents?: Agents;
  /** --proxy: every request goes through it, and the policy judges names instead of resolved addresses */
  proxy?: Proxy;
  /** where the worker's events are counted (/metrics, the dashboard); one of its own when not given */
  metrics?: Metrics;
  /** --log-failures: one rate-limited line per failed attempt */
  logFailures?: boolean;
  /** shared by every worker of the process (one per database); one of its own, of --concurrency, when not given */
  window?: RequestWindow;
  /** told after each restart (net.worker_restart(), POST /restart), once the new settings are in force */
  onRestarted?: () => void;
}

export type WorkerState = "starting" | "running" | "reconnecting" | "stopping" | "stopped";

export interface WorkerStatus {
  workerId: string;
  state: WorkerState;
  connected: boolean;
  inFlight: number;
  /** claimed requests waiting for their host's limits (they hold no slot of the window) */
  waitingForHost: number;
  pendingWrites: number;
  /** results stored since start, by outcome; attempts put back for a retry; requests kept as dead letters */
  counters: Counters;
  settings: WorkerSettings;
  sources: ResolvedSettings["sources"];
  /** Date.now() of the last successful statement */
  lastProgressAt: number;
  lastError: { message: string; at: number } | null;
  /** set while pgnet's statements time out waiting for a lock or run past statement_timeout */
  blocked: { message: string; since: number } | null;
  /** bytes of bodies held, of the memory budget's capacity */
  memory: { used: number; budget: number; waiting: number };
  egress: ReturnType<EgressPolicy["describe"]> & { allowInsecureRedirects: boolean; proxy: string | null };
}

export interface Counters {
  succeeded: number;
  failed: number;
  timedOut: number;
  claimed: number;
  retried: number;
  deadLettered: number;
}

/** restarts asked for through net.worker_restart() are at least this far apart */
const RESTART_INTERVAL_MS = 1000;

// lock_not_available (lock_timeout) and query_canceled (statement_timeout)
const BLOCKED = new Set(["55P03", "57014"]);
const DEADLOCK = "40P01";

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
  readonly #sizes = new ResponseSizes();
  readonly metrics: Metrics;
  readonly #failureLog: FailureLog | null;
  /** when each request held was enqueued, by this process's clock (performance.now()), for enqueue → stored */
  readonly #enqueuedAt = new Map<string, number>();
  #egress!: EgressPolicy;
  #limits!: HostLimits;
  #resolve!: Resolve;
  #budget!: MemoryBudget;
  #resolved!: ResolvedSettings;
  #state: WorkerState = "starting";
  #db: Connections | null = null;
  /** requests claimed and not finished: in flight, or waiting for memory or their host's limits */
  #inFlight = new Set<string>();
  /** this worker's part of the window: the requests it has started, of those the process may have in flight */
  #share!: Share;
  /** the window, when it is this worker's alone (no `window` option): sized by its own --concurrency */
  #ownWindow: RequestWindow | null = null;
  /** the full hosts a claim passed over last and found nothing else: not claimed for again until a new request */
  #fruitlessSkip: string | null = null;
  /** where claims start reading the queue: after the rows claims before them read (src/cursor.ts) */
  #cursor = new QueueCursor(() => REWIND_POLLS * this.settings.pollIntervalMs);
  /** when the next kick for a request waiting out its backoff is set for (Date.now() ms) */
  #nextWake = Number.POSITIVE_INFINITY;
  /** the claim pass in progress, if any */
  #pumping: Promise<void> | null = null;
  #wanted = false;
  #backlog = false;
  #failures = 0;
  #stopping: Promise<void> | null = null;
  #restarting: Promise<void> | null = null;
  #counters: Counters = { succeeded: 0, failed: 0, timedOut: 0, claimed: 0, retried: 0, deadLettered: 0 };
  #lastProgressAt = Date.now();
  #lastError: WorkerStatus["lastError"] = null;
  #blocked: WorkerStatus["blocked"] = null;
  #schemaMissing = false;
  #storedSinceCollect = 0;
  #restartsSeen = { table: 0, id: 0 };
  #restartPending = false;
  #lastRestartAt = 0;
  /** the failure last logged, while no statement has succeeded since */
  #failingWith: string | null = null;

  constructor(options: WorkerOptions) {
    this.#options = options;
    this.#log = options.logger;
    this.metrics = options.metrics ?? new Metrics();
    this.#failureLog = options.logFailures ? new FailureLog(options.logger) : null;
    this.useEgressPolicy(options.egress ?? new EgressPolicy());
    this.#writer = new Writer({
      queue: () => {
        if (!this.#db) throw new Error("the worker's connections are closed");
        return this.#db.queue;
      },
      maxWriteBytes: () => this.settings.maxWriteBytes,
      writeDelayMs: () => this.settings.writeDelayMs,
      running: () => this.#inFlight.size,
      onFail: (message, error) => this.#fail(message, error),
      onStored: (rows) => {
        this.#progress();
        this.#collectAfter(rows);
        const now = performance.now();
        for (const row of rows) {
          const at = this.#enqueuedAt.get(row.id);
          this.#enqueuedAt.delete(row.id);
          if (at !== undefined) this.metrics.stored(now - at, row.dead === true);
        }
      },
      onRescheduled: (delayMs) => this.#wakeIn(delayMs),
    });
  }

  get settings(): WorkerSettings {
    return this.#resolved.settings;
  }

  /**
   * Connects, reads settings, starts listening and polling. Rejects if the first connection fails, having
   * released what it took (the worker is then stopped; make a new one to try again).
   */
  async start(): Promise<void> {
    try {
      await this.#begin();
    } catch (error) {
      this.#share?.leave();
      const db = this.#db;
      this.#db = null;
      await closeConnections(db);
      this.#state = "stopped";
      this.#stopping ??= Promise.resolve();
      throw error;
    }
  }

  /** The queue's cheap counts, read through the worker's own pool; rejects while it is not connected. */
  queueDepth(): Promise<QueueDepth> {
    if (!this.#db) return Promise.reject(new Error("not connected to the database"));
    return readQueueDepth(this.#db.sql);
  }

  /** Memory was given back to a budget shared with other workers: claim again if this one was held back. */
  wakeForMemory(): void {
    if (this.#backlog) this.#kick();
  }

  async #begin(): Promise<void> {
    await this.#loadSettings();
    this.#limits = new HostLimits(this.#hostLimits(), () => this.#kick());
    const window = this.#options.window ?? (this.#ownWindow = new RequestWindow(this.settings.concurrency));
    this.#share = window.join(() => this.#kick());
    this.#budget = this.#options.budget ??
      new MemoryBudget(this.settings.memoryBudgetBytes, () => this.wakeForMemory());
    this.#db = await this.#connect();
    await this.#checkIdentity(this.#db.sql);
    this.#restartsSeen = await this.#db.queue.lastRestartRequest().catch(() => ({ table: 0, id: 0 }));
    await this.#reap();
    this.#state = "running";
    this.#kick(); // the listener's catch-up ran before the connections were in place
    this.#schedulePoll();
    this.#scheduleLeaseRenewal();
    const proxy = this.#options.proxy ? { proxy: this.#options.proxy.display } : {};
    this.#log.info("worker started", { worker: this.id, ...this.settings, egress: this.#egress.describe(), ...proxy });
  }

  /** Replaces the egress policy (pgnet's own status server joins it once it listens); applies to new requests. */
  useEgressPolicy(policy: EgressPolicy): void {
    this.#egress = policy;
    this.#resolve = this.#options.proxy
      ? proxiedCheck(policy)
      : guardedResolve(policy, this.#options.resolve ?? systemResolve);
  }

  /** Re-reads settings: flags, environment, and pg_net.* as a new session sees them. */
  async reload(): Promise<void> {
    await this.#loadSettings();
    this.#limits.update(this.#hostLimits());
    this.#ownWindow?.resize(this.settings.concurrency);
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
    this.#limits.update(this.#hostLimits());
    this.#ownWindow?.resize(this.settings.concurrency);
    if (this.#stopping) return; // shutdown closes the current connections
    const old = this.#db;
    this.#db = await this.#connect();
    this.#kick();
    await closeConnections(old);
    this.#log.info("worker restarted", { ...this.settings });
    this.#options.onRestarted?.();
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
      inFlight: this.#share?.active ?? 0,
      waitingForHost: this.#limits?.waiting ?? 0,
      pendingWrites: this.#writer.pending,
      counters: { ...this.#counters },
      settings: { ...this.settings },
      sources: { ...this.#resolved.sources },
      lastProgressAt: this.#lastProgressAt,
      lastError: this.#lastError,
      blocked: this.#blocked,
      memory: { used: this.#budget.used, budget: this.#budget.capacity, waiting: this.#budget.waiting },
      egress: {
        ...this.#egress.describe(),
        allowInsecureRedirects: this.#options.allowInsecureRedirects === true,
        proxy: this.#options.proxy?.display ?? null,
      },
    };
  }

  /** Resolves once nothing is in flight and every result is stored (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.#inFlight.size > 0 || this.#writer.busy) {
      if (this.#writer.busy) await this.#writer.drained();
      else await new Promise((r) => setTimeout(r, 10));
    }
  }

  /**
   * Counts an attempt's outcome (/metrics, the dashboard) and logs it if it failed (--log-failures). Its host is
   * labelled by the --host-limits pattern it matches, or "other": a bounded set of label values.
   */
  #report(event: Omit<Finished, "hostLabel" | "retried">, retried: boolean): void {
    const hostLabel = ruleFor(this.settings.hostRules, event.host)?.pattern ?? "other";
    const finished = { ...event, hostLabel, retried };
    this.metrics.finished(finished);
    this.#failureLog?.attempt(finished);
  }

  #hostLimits(): HostLimitSettings {
    return { concurrency: this.settings.hostConcurrency, rules: this.settings.hostRules };
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
    const { lockTimeoutMs, statementTimeoutMs } = this.settings;
    // names in pgnet's statements are schema-qualified and its parameters cast; the pinned search_path keeps a
    // function or operator someone created in another schema from being picked instead of pg_catalog's
    // and every statement runs as pgnet_worker (or pg_net.username: #checkRole), whatever role pgnet logged in as
    // (sql/0003_privileges.sql)
    const session = { search_path: "pg_catalog, pg_temp", role: this.settings.role };
    const sql = connect(target, {
      max: 4,
      connect_timeout: 10,
      idle_timeout: 60,
      connection: {
        ...session,
        ...PLAN_SETTINGS, // src/queue.ts: generic plans, by index, never planned again for each call
        lock_timeout: lockTimeoutMs,
        statement_timeout: statementTimeoutMs,
      },
    });
    const listener = new Listener({
      target,
      connection: session,
      timers: this.#timers,
      onNotify: (channel, payload) => this.#onNotify(channel, payload),
      onListen: () => {
        this.#progress();
        // catch up: requests queued while nobody was listening, and rows inserted directly into the queue; the
        // queue may be a new one (schema net installed again), its ids starting over
        this.#cursor.reset();
        this.#newWork();
      },
      onReconnect: () => {
        this.metrics.reconnected();
        this.#log.info("reconnected");
      },
      onFail: (message, error) => this.#fail(message, error),
    });
    try {
      await listener.start();
      await this.#checkRole(sql);
    } catch (error) {
      await closeConnections({ sql, listener, queue: null as never });
      throw error;
    }
    const observe = (kind: string, seconds: number, ok: boolean) => this.metrics.statement(kind, seconds, ok);
    return { sql, queue: new Queue(sql, this.id, observe), listener };
  }

  /** The payload is not trusted: any role can NOTIFY on these channels. */
  #onNotify(channel: string, payload: string): void {
    if (channel === WAKE_CHANNEL) {
      this.#cursor.lower(payload); // a transaction's first id (sql/0012): its rows may be behind the claims
      this.#newWork();
    } else if (channel === CONTROL_CHANNEL) void this.#restartIfAsked();
  }

  /**
   * A NOTIFY on the control channel is only a hint (any role can send one): the worker restarts when
   * net.worker_restart() recorded a request it has not seen, at most once a second however many arrive.
   */
  async #restartIfAsked(): Promise<void> {
    if (!this.#db || this.#stopping) return;
    let latest: { table: number; id: number };
    try {
      latest = await this.#db.queue.lastRestartRequest();
    } catch (error) {
      return this.#fail("cannot read restart requests", error);
    }
    // another table: schema net was installed anew and its ids start again
    const seen = latest.table === this.#restartsSeen.table ? this.#restartsSeen.id : 0;
    if (latest.id <= seen) return;
    this.#restartsSeen = latest;
    if (this.#restartPending) return;
    this.#restartPending = true;
    // the slot is taken now, so requests arriving meanwhile fold into this restart or the next one
    const at = Math.max(Date.now(), this.#lastRestartAt + RESTART_INTERVAL_MS);
    this.#lastRestartAt = at;
    this.#timers.after(at - Date.now(), () => {
      this.#restartPending = false;
      this.restart().catch((error) => this.#fail("restart failed", error));
      this.#db?.queue.pruneRestartRequests().catch(() => {});
    });
  }

  /**
   * pg_net.username (or --role) names the role pgnet's statements run as instead of pgnet_worker. Code that the
   * owner of schema net attaches to its tables runs with that role's privileges, so it must hold pgnet_worker's and
   * must not be a superuser; anything else stops the worker from connecting, saying why.
   */
  async #checkRole(sql: Sql): Promise<void> {
    const role = this.settings.role;
    if (role === WORKER_ROLE) return;
    const [row] = await sql<{ superuser: boolean; member: boolean | null }[]>`
      select r.rolsuper as superuser,
             case when pg_catalog.to_regrole(${WORKER_ROLE}) is not null
                  then pg_catalog.pg_has_role(current_user, ${WORKER_ROLE}, 'USAGE') end as member
        from pg_catalog.pg_roles r where r.rolname = current_user
    `;
    const source = this.#resolved.sources.role === "database" ? "pg_net.username" : "--role";
    if (row?.superuser) {
      throw new Error(
        `${source} names ${role}, a superuser: pgnet's statements never run as one; name a member of ${WORKER_ROLE}`,
      );
    }
    if (row?.member === false) {
      throw new Error(
        `${source} names ${role}, which is not a member of ${WORKER_ROLE}: grant ${WORKER_ROLE} to ${role}`,
      );
    }
  }

  /** Says which role pgnet's statements run as, and warns where the setup weakens the privilege model. */
  async #checkIdentity(sql: Sql): Promise<void> {
    const [who] = await sql<
      { current: string; login: string; superuser: boolean; owner: string; owner_super: boolean; rls: boolean }[]
    >`
      select current_user as current, session_user as login,
             (select rolsuper from pg_catalog.pg_roles where rolname = session_user) as superuser,
             c.relowner::regrole::text as owner,
             (select rolsuper from pg_catalog.pg_roles where oid = c.relowner) as owner_super,
             c.relrowsecurity as rls
        from pg_catalog.pg_class c
       where c.oid = pg_catalog.to_regclass('net.http_request_queue')
    `;
    if (!who) return; // schema net is not there (yet): the pump says so
    this.#log.info(`statements run as ${who.current}`, { login: who.login, superuser: who.superuser });
    if (who.superuser && !who.owner_super) {
      this.#log.warn(
        `pgnet logs in as the superuser ${who.login}: its statements run as ${who.current}, but code that the owner ` +
          `of schema net (${who.owner}) adds to its tables could switch back; log in as a role that is not a ` +
          "superuser and is a member of pgnet_worker",
      );
    }
    if (!who.rls) {
      this.#log.warn(
        "pg_net's privileges are in force (pgnet install --privileges pg_net): every role can read and change every " +
          "request and response; pgnet install --privileges pgnet restores pgnet's",
      );
    }
  }

  /** Requests may have arrived for hosts that are not full: claim, even past full hosts that held nothing else. */
  #newWork(): void {
    this.#fruitlessSkip = null;
    this.#kick();
  }

  /** Asks for a claim pass; passes never overlap, and one asked for during a pass runs right after it. */
  #kick(): void {
    this.#wanted = true;
    if (!this.#pumping && !this.#stopping && this.#db) {
      this.#pumping = this.#pump().finally(() => {
        this.#pumping = null;
      });
    }
  }

  async #pump(): Promise<void> {
    try {
      while (this.#wanted && !this.#stopping) {
        this.#wanted = false;
        // claim while slots and memory are free and claims come back full (more may be waiting)
        while (!this.#stopping) {
          const free = this.#share.room(true);
          const limit = Math.min(free, this.settings.batchSize, this.#budget.roomFor(REQUEST_RESERVE));
          if (limit <= 0) {
            this.#backlog = true; // a finishing request, or memory given back, kicks again
            break;
          }
          const skip = this.#limits.saturated();
          const skipKey = skip.sort().join(" ");
          // a claim that passes over full hosts reads their queued rows in the index: when the same hosts are full
          // and the last such claim found nothing else, only a new request (NOTIFY, poll) can change that.
          // Measured, 100,000 POSTs to one host, which fills its share over and over: 4,758 req/s with such claims
          // repeated each time, 5,824 without (medians of 3)
          if (skip.length > 0 && skipKey === this.#fruitlessSkip) break;
          const from = this.#cursor.next(skip);
          const { claimed, expired, nextDueMs, read } = await this.#db!.queue.claim(limit, this.settings, from);
          this.#cursor.advance(from, read);
          // past full hosts the claim stopped reading at QUEUE_SCAN_ROWS: the next one reads on, if this one got
          // anywhere
          const unread = skip.length > 0 && read.rows === QUEUE_SCAN_ROWS &&
            (read.after !== null || claimed.length > 0);
          this.#fruitlessSkip = skip.length > 0 && claimed.length === 0 && !unread ? skipKey : null;
          this.#progress();
          if (nextDueMs !== null && nextDueMs < this.settings.pollIntervalMs) this.#wakeIn(nextDueMs);
          this.#counters.claimed += claimed.length;
          for (const c of claimed) this.#start(c);
          if (expired >= this.settings.batchSize) this.#wanted = true; // more responses to expire
          this.#backlog = claimed.length === limit;
          if (!this.#backlog && !unread) break;
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
          this.#cursor.reset(); // installed again, the queue's ids start over
          this.#fail("schema net is missing or incomplete: idling until it is installed (pgnet install)", error);
        }
      } else {
        // a deadlock with another session's DDL (DROP SCHEMA net while a claim runs): PostgreSQL chose the claim
        // to give way, the other statement went on, and the claim runs again; nothing is wrong with pgnet
        if (errorCode(error) === DEADLOCK) this.#log.warn("a claim gave way in a deadlock: retrying");
        else this.#fail("cannot claim requests", error);
        this.#timers.after(backoffMs(this.#failures++), () => this.#kick());
      }
    }
  }

  /**
   * Runs a claimed request once its host's limits and the memory budget have room for it; a poison row becomes its
   * error row. The outcome is stored, or put back in the queue for another attempt, as its retry policy says.
   */
  #start(claimed: Claimed): void {
    const { request, bytes, attempts, retried, host } = claimed;
    const { maxRequestBytes, maxAttempts } = this.settings;
    this.#inFlight.add(request.id);
    this.#enqueuedAt.set(request.id, performance.now() - claimed.queuedMs);
    if (bytes > maxRequestBytes) {
      const message = `Request not sent: its URL, headers and body are ${bytes} bytes, over pgnet's ` +
        `--max-request-size of ${maxRequestBytes} bytes`;
      return this.#reject(claimed, message);
    }
    // claims that ended with an outcome were counted as retried; the others ended with their worker
    if (attempts - retried > maxAttempts) {
      const message = `Request not sent again: it was claimed ${attempts - retried} times without a stored result ` +
        `(the worker holding it stopped each time), more than pgnet's --max-attempts of ${maxAttempts}`;
      return this.#reject(claimed, message);
    }
    let policy: RetryPolicy | null;
    try {
      policy = claimed.retry === null ? this.settings.retryPolicy : parseRetryPolicy(claimed.retry);
    } catch (error) {
      return this.#reject(claimed, `Request not sent: invalid retry policy: ${(error as Error).message}`);
    }
    void (async () => {
      const turn = this.#limits.acquire(host);
      if (turn) await turn;
      if (this.#stopping) {
        this.#limits.release(host); // not started: shutdown gives it back to the queue
        return;
      }
      this.#share.take();
      let row: ResponseRow | null = null;
      let hold: Hold | null = null;
      let durationMs = 0;
      try {
        // a large request is read only once its memory is set aside
        const charge = this.#sizes.charge(claimed.unloaded ? null : hostKey(request.url), bytes);
        if (!this.#budget.tryTake(charge)) await this.#budget.take(charge);
        hold = new Hold(this.#budget, bytes, charge);
        if (claimed.unloaded && !(await this.#load(claimed))) return hold.release();
        const started = performance.now();
        row = await performRequest(request, {
          maxResponseBytes: this.settings.maxResponseBytes,
          room: hold,
          resolve: this.#resolve,
          allowInsecureRedirects: this.#options.allowInsecureRedirects === true,
          ...(this.#options.agents ? { agents: this.#options.agents } : {}),
          ...(this.#options.proxy ? { proxy: this.#options.proxy } : {}),
        });
        durationMs = performance.now() - started;
        if (row.status_code !== null) this.#sizes.record(hostKey(request.url), hold.bodyBytes);
      } finally {
        this.#share.give();
        this.#limits.release(host);
        if (row) {
          const event = { id: request.id, method: request.method, host, row, durationMs, attempt: attempts };
          this.#outcome(event, hold!, policy);
        } else {
          this.#inFlight.delete(request.id); // no longer this worker's
          this.#enqueuedAt.delete(request.id);
        }
      }
    })();
  }

  /** Stores an error row for a request that is not sent at all (a poison row), counted like any outcome. */
  #reject(claimed: Claimed, message: string): void {
    const row = failure(claimed.request.id, message, false);
    const { method } = claimed.request;
    this.#report({ id: row.id, method, host: claimed.host, row, durationMs: 0, attempt: claimed.attempts }, false);
    this.#store(row, null);
  }

  /** Reads a large request's URL, headers and body; false when it is no longer this worker's. */
  async #load(claimed: Claimed): Promise<boolean> {
    for (let attempt = 0; !this.#stopping; attempt++) {
      try {
        return await this.#db!.queue.load(claimed.request);
      } catch (error) {
        this.#fail(`cannot read request ${claimed.request.id}`, error);
        await this.#timers.sleep(backoffMs(attempt));
      }
    }
    return false;
  }

  /** Stores the outcome of an attempt, or puts the request back in the queue for the next one. */
  #outcome(
    event: Omit<Finished, "hostLabel" | "retried">,
    hold: Hold,
    policy: RetryPolicy | null,
  ): void {
    const { row, attempt } = event;
    const decision = decide(policy, attempt, row, policy ? retryAfter(row.headers) : null);
    this.#report(event, decision.action === "retry");
    if (decision.action === "store") {
      row.last_error = decision.failure;
      row.dead = decision.dead;
      return this.#store(row, hold);
    }
    if (!this.#inFlight.delete(row.id)) return hold.release(); // given back at shutdown
    hold.release();
    this.#enqueuedAt.delete(row.id);
    this.#counters.retried++;
    this.#writer.reschedule({ id: row.id, delayMs: decision.delayMs, failure: decision.failure });
    if (this.#backlog) this.#kick();
  }

  #store(row: ResponseRow, hold: Hold | null): void {
    if (!this.#inFlight.delete(row.id)) {
      hold?.release(); // given back at shutdown
      return;
    }
    this.#count(row);
    // the stored text, and the driver's copy of it while it is sent
    // (raw bytes are held as well, and sent as hex: four times their size)
    hold?.shrink((row.content === null ? 0 : 2 * hold.bodyBytes) + (row.body === null ? 0 : 4 * hold.bodyBytes) + 1024);
    this.#writer.push(row, hold);
    if (this.#backlog) this.#kick();
  }

  /** Claims again when the first request waiting out its backoff is due, unless a kick is set for sooner. */
  #wakeIn(delayMs: number): void {
    const at = Date.now() + Math.max(0, delayMs);
    if (at >= this.#nextWake) return;
    this.#nextWake = at;
    this.#timers.after(at - Date.now() + 1, () => {
      if (this.#nextWake === at) this.#nextWake = Number.POSITIVE_INFINITY;
      this.#newWork();
    });
  }

  #count(result: ResponseRow): void {
    if (result.dead) this.#counters.deadLettered++;
    if (result.timed_out) this.#counters.timedOut++;
    else if (result.error_msg !== null) this.#counters.failed++;
    else this.#counters.succeeded++;
  }

  /** Extends the lease of everything this worker holds, so long requests are not claimed twice. */
  #scheduleLeaseRenewal(): void {
    this.#timers.after(this.settings.leaseMs / 3, async () => {
      const ids = [...this.#inFlight, ...this.#writer.ids()];
      if (ids.length > 0 && this.#db) {
        await this.#db.queue.renew(ids, this.settings.leaseMs).catch((error) =>
          this.#fail("cannot renew leases", error)
        );
      }
      await this.#reap();
      if (!this.#stopping) this.#scheduleLeaseRenewal();
    });
  }

  /**
   * Puts requests of workers that died (their lease ran out) back in the queue, and claims them if any; deletes
   * dead letters past --dead-letter-ttl.
   */
  async #reap(): Promise<void> {
    if (!this.#db) return;
    try {
      const { reaped } = await this.#db.queue.reap(this.settings.deadLetterTtlSeconds, this.settings.batchSize);
      if (reaped > 0) {
        this.#log.info("requests whose worker stopped are queued again", { count: reaped });
        this.#newWork();
      }
    } catch (error) {
      // while schema net is missing the pump says so, once
      if (!SCHEMA_MISSING.has(errorCode(error) ?? "")) this.#fail("cannot reclaim expired leases", error);
    }
  }

  #schedulePoll(): void {
    this.#timers.after(this.settings.pollIntervalMs, () => {
      this.#newWork(); // rows inserted directly send no NOTIFY
      if (!this.#stopping) this.#schedulePoll();
    });
  }

  async #shutdown(timeoutMs: number): Promise<void> {
    this.#state = "stopping";
    this.#timers.clear();
    const deadline = Date.now() + timeoutMs;
    // a claim under way: what it claims is in flight, finished or given back below. A claim takes milliseconds; one
    // that has not ended in 5 s is waiting on a database that is gone, and closing the connections below ends it
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.#pumping, new Promise((resolve) => (timer = setTimeout(resolve, 5000)))]);
    clearTimeout(timer);
    // requests that have started may finish; those still waiting for their host or memory are given back
    while (this.#share.active > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, Math.min(20, deadline - Date.now())));
    }
    await this.#restarting?.catch(() => {}); // so no connection it opens outlives the shutdown
    const unfinished = [...this.#inFlight];
    this.#inFlight.clear();
    this.#enqueuedAt.clear();
    this.#limits.clear();
    // results are written until the shutdown timeout, a few seconds at least, then what is left is reported
    await this.#writer.stop(Math.max(deadline, Date.now() + 3000));
    const db = this.#db;
    if (unfinished.length > 0 && db) {
      // give them back now rather than when the lease ends; they may have been sent: at-least-once
      await db.queue.release(unfinished).catch((error) => this.#fail("cannot release unfinished requests", error));
      this.#log.warn("unfinished requests returned to the queue", { count: unfinished.length });
    }
    this.#db = null;
    await closeConnections(db);
    this.#share.leave();
    this.#state = "stopped";
    this.#log.info("worker stopped", { lost: this.#writer.lost });
  }

  /** After 32 MiB of bodies were stored, the runtime is asked to free their memory rather than let it pile up. */
  #collectAfter(rows: readonly ResponseRow[]): void {
    for (const row of rows) this.#storedSinceCollect += row.content?.length ?? 0;
    if (this.#storedSinceCollect < 32 * 1_048_576) return;
    this.#storedSinceCollect = 0;
    releaseMemory();
  }

  #progress(): void {
    this.#lastProgressAt = Date.now();
    this.#failingWith = null;
    if (this.#blocked) {
      this.#log.info("statements run again", { blockedFor: `${Date.now() - this.#blocked.since}ms` });
      this.#blocked = null;
    }
  }

  #fail(message: string, error: unknown): void {
    const e = coerceError(error);
    const code = errorCode(error);
    this.#lastError = { message: `${message}: ${e.message}`, at: Date.now() };
    if (BLOCKED.has(code ?? "")) {
      // another session holds a lock pgnet needs (or a statement ran too long): say who to look for
      this.#blocked ??= { message: `${message}: ${e.message}`, since: Date.now() };
      this.#log.error(`${message}: blocked (see pg_locks and pg_stat_activity for the session holding it)`, {
        error: e,
        code,
      });
      return;
    }
    // a database that is down or gone fails the same way at every reconnection attempt and poll: said once,
    // then at debug level until a statement succeeds again
    const key = `${code}:${e.message}`;
    if (key === this.#failingWith) return this.#log.debug(message, { error: e, code, repeated: true });
    this.#failingWith = key;
    this.#log.error(message, { error: e, code });
  }
}

/** The response's Retry-After header, in whatever case the server spelled it. */
function retryAfter(headers: Record<string, string> | null): string | null {
  if (!headers) return null;
  for (const name in headers) if (name.toLowerCase() === "retry-after") return headers[name]!;
  return null;
}

async function closeConnections(db: Connections | null): Promise<void> {
  if (!db) return;
  await Promise.all([db.listener.close(), db.sql.end({ timeout: 5 }).catch(() => {})]);
}
