// The databases one pgnet process serves: a worker each, sharing the window (--concurrency, split fairly between
// the databases with work: window.ts), the memory budget, the connection pools, the egress policy and the
// metrics registry. A database that cannot be reached, or goes away, affects only its own worker.
//
// With --all-databases the fleet watches a server: every database that has schema net gets a worker, within a
// discovery interval of schema net appearing, and loses it when the schema or the database goes away.

import { MemoryBudget } from "./budget.ts";
import { resolveSettings, type SettingValues } from "./config.ts";
import { connect, describe, type Sql, type Target } from "./db.ts";
import { EgressPolicy } from "./egress.ts";
import { coerceError } from "./errors.ts";
import type { Agents, Proxy } from "./http.ts";
import { type Logger, withFields } from "./log.ts";
import { Metrics, MetricsRegistry } from "./metrics.ts";
import { cachedDepth, type QueueDepth } from "./queue.ts";
import { backoffMs, Timers } from "./timers.ts";
import { RequestWindow } from "./window.ts";
import { Worker } from "./worker.ts";

export interface FleetOptions {
  logger: Logger;
  /** settings given as flags, and the environment read for PGNET_* */
  flags: SettingValues;
  env: Record<string, string | undefined>;
  egress?: EgressPolicy;
  allowInsecureRedirects?: boolean;
  agents?: Agents;
  proxy?: Proxy;
  logFailures?: boolean;
}

/** One database as the status server and /metrics see it. */
export interface Served {
  /** its name in logs, /status and the `database` label: the database's name, or host:port/name */
  name: string;
  /** host:port/database, without credentials */
  where: string;
  worker: Worker;
  metrics: Metrics;
  queueDepth(): Promise<QueueDepth>;
  /** set while the first connection keeps failing (the worker is not running): why, and since when */
  pending: { message: string; since: number } | null;
}

interface Member extends Served {
  target: Target;
  timers: Timers;
  onRestarted: (() => void) | undefined;
  /** its first start is under way */
  starting: boolean;
}

export class Fleet {
  readonly registry = new MetricsRegistry();
  readonly window: RequestWindow;
  readonly budget: MemoryBudget;
  readonly #options: FleetOptions;
  readonly #log: Logger;
  readonly #members = new Map<string, Member>();
  #egress: EgressPolicy;
  #stopping = false;
  #discovery: { timers: Timers } | null = null;
  /** the connections that watch servers (--all-databases, pg_net.database_name) */
  readonly #admins: Sql[] = [];

  constructor(options: FleetOptions) {
    this.#options = options;
    this.#log = options.logger;
    this.#egress = options.egress ?? new EgressPolicy();
    // the window and the budget are the process's: --concurrency and --memory-budget from flags and environment
    const { settings } = resolveSettings({ flags: options.flags, env: options.env });
    this.window = new RequestWindow(settings.concurrency);
    this.budget = new MemoryBudget(settings.memoryBudgetBytes, () => {
      for (const m of this.#members.values()) m.worker.wakeForMemory();
    });
  }

  /** The databases served, in the order they were added (not those whose first connection is still under way). */
  served(): Served[] {
    return [...this.#members.values()].filter((m) => !m.starting);
  }

  /**
   * Serves a database under `name`. With `retry`, a first connection that fails is tried again with backoff
   * (and said once); without, the failure is thrown, as for a single database at start-up.
   */
  async add(target: Target, name: string, options: { retry: boolean; onRestarted?: () => void }): Promise<void> {
    if (this.#members.has(name) || this.#stopping) return;
    const member = this.#member(target, name, where(target), options.onRestarted);
    this.#members.set(name, member);
    try {
      await member.worker.start();
      member.starting = false;
      this.#publish(member);
    } catch (error) {
      if (!options.retry) {
        this.#members.delete(name);
        throw error;
      }
      member.pending = { message: coerceError(error).message, since: Date.now() };
      member.starting = false;
      this.#publish(member);
      this.#log.error("cannot serve this database yet: retrying until it can be reached", {
        database: name,
        error: coerceError(error),
      });
      this.#retryStart(member, 0);
    }
  }

  /** Stops serving a database: its in-flight requests finish (up to `timeout` ms) and unfinished ones go back. */
  async remove(name: string, why: string, timeout?: number): Promise<void> {
    const member = this.#members.get(name);
    if (!member) return;
    this.#members.delete(name);
    member.timers.clear();
    member.metrics.useSources(null);
    this.#log.info(`no longer serving this database: ${why}`, { database: name });
    await member.worker.stop(timeout === undefined ? {} : { timeout }).catch(() => {});
  }

  /** Replaces the egress policy of every worker, and of those added later. */
  useEgressPolicy(policy: EgressPolicy): void {
    this.#egress = policy;
    for (const m of this.#members.values()) m.worker.useEgressPolicy(policy);
  }

  async reload(): Promise<void> {
    this.#resize();
    await this.#each((w) => w.reload());
  }

  async restart(): Promise<void> {
    this.#resize();
    await this.#each((w) => w.restart());
  }

  /**
   * --all-databases: every database of the server `target` points at that has schema net is served, looked for
   * again every `intervalMs`; databases that lose schema net (or are dropped) stop being served.
   */
  async discover(target: Target, intervalMs: number): Promise<void> {
    const admin = connect(target, { max: 1, idle_timeout: 30, connect_timeout: 10 });
    const timers = new Timers();
    this.#discovery = { timers };
    this.#admins.push(admin);
    await this.#discoverOnce(target, admin, true);
    const again = () =>
      timers.after(intervalMs, async () => {
        await this.#discoverOnce(target, admin, false);
        if (!this.#stopping) again();
      });
    again();
  }

  /**
   * A server without a database named: serve the database its pg_net.database_name names (postgres when unset),
   * as pg_net's worker does, and read it again after each restart (net.worker_restart()): a new name moves the
   * worker there. `install` runs first in each database it is to serve (pgnet run installs or upgrades schema net).
   */
  async follow(server: Target, install: (target: Target) => Promise<void>): Promise<void> {
    const admin = connect(databaseIn(server, "postgres"), { max: 1, idle_timeout: 30, connect_timeout: 10 });
    this.#admins.push(admin);
    let current = await databaseNameSetting(admin);
    this.#log.info("serving the database pg_net.database_name names", { database: current });
    const onRestarted = () => {
      void (async () => {
        let next: string;
        try {
          next = await databaseNameSetting(admin);
        } catch (error) {
          return this.#log.error("cannot read pg_net.database_name", { error: coerceError(error) });
        }
        if (next === current || this.#stopping) return;
        const previous = current;
        current = next;
        await this.remove(previous, `pg_net.database_name now names ${next}`);
        try {
          await install(databaseIn(server, next));
        } catch (error) {
          this.#log.error("cannot install schema net in this database", { database: next, error: coerceError(error) });
        }
        await this.add(databaseIn(server, next), next, { retry: true, onRestarted });
      })();
    };
    await install(databaseIn(server, current));
    await this.add(databaseIn(server, current), current, { retry: false, onRestarted });
  }

  async stop(timeout?: number): Promise<void> {
    this.#stopping = true;
    this.#discovery?.timers.clear();
    await Promise.all(this.#admins.map((admin) => admin.end({ timeout: 2 }).catch(() => {})));
    const members = [...this.#members.values()];
    for (const m of members) m.timers.clear();
    await Promise.all(members.map((m) => m.worker.stop(timeout === undefined ? {} : { timeout }).catch(() => {})));
  }

  #member(target: Target, name: string, where: string, onRestarted?: () => void): Member {
    const metrics = new Metrics({ registry: this.registry, database: name });
    const { logger, flags, env, allowInsecureRedirects, agents, proxy, logFailures } = this.#options;
    const worker = new Worker({
      target,
      logger: withFields(logger, { database: name }),
      flags,
      env,
      budget: this.budget,
      window: this.window,
      egress: this.#egress,
      metrics,
      ...(allowInsecureRedirects ? { allowInsecureRedirects } : {}),
      ...(agents ? { agents } : {}),
      ...(proxy ? { proxy } : {}),
      ...(logFailures ? { logFailures } : {}),
      ...(onRestarted ? { onRestarted } : {}),
    });
    const member: Member = {
      name,
      where,
      target,
      worker,
      metrics,
      pending: null,
      timers: new Timers(),
      onRestarted,
      starting: true,
      queueDepth: cachedDepth(() => worker.queueDepth()),
    };
    return member;
  }

  /** Points the database's gauges at its worker, or, while it cannot connect, at a worker that is down. */
  #publish(member: Member): void {
    const { worker, queueDepth } = member;
    const down = () => ({
      connected: false,
      inFlight: 0,
      waitingForHost: 0,
      pendingWrites: 0,
      memory: { used: this.budget.used, budget: this.budget.capacity },
    });
    member.metrics.useSources({
      status: () => member.pending ? down() : worker.status(),
      queueDepth: () => member.pending ? Promise.reject(new Error(member.pending.message)) : queueDepth(),
    });
  }

  #retryStart(member: Member, attempt: number): void {
    member.timers.after(backoffMs(attempt), async () => {
      if (this.#stopping || this.#members.get(member.name) !== member) return;
      const fresh = this.#member(member.target, member.name, member.where, member.onRestarted);
      try {
        await fresh.worker.start();
      } catch (error) {
        member.pending = { message: coerceError(error).message, since: member.pending?.since ?? Date.now() };
        return this.#retryStart(member, attempt + 1);
      }
      if (this.#stopping || this.#members.get(member.name) !== member) return void fresh.worker.stop();
      member.worker = fresh.worker;
      member.metrics = fresh.metrics;
      member.queueDepth = fresh.queueDepth;
      member.pending = null;
      this.#publish(member);
      this.#log.info("serving this database now", { database: member.name });
    });
  }

  async #discoverOnce(target: Target, admin: Sql, first: boolean): Promise<void> {
    let names: string[];
    try {
      const rows = await admin<{ datname: string }[]>`
        select datname from pg_catalog.pg_database
         where datallowconn and not datistemplate and pg_catalog.has_database_privilege(datname, 'CONNECT')
         order by datname
      `;
      names = rows.map((r) => r.datname);
    } catch (error) {
      if (first) throw error;
      this.#log.error("cannot list the server's databases: trying again at the next discovery", {
        error: coerceError(error),
      });
      return;
    }
    const withNet: string[] = [];
    for (const name of names) {
      if (await hasSchemaNet({ ...target, ...databaseIn(target, name) })) withNet.push(name);
    }
    for (const name of [...this.#members.keys()]) {
      if (!withNet.includes(name)) {
        await this.remove(name, names.includes(name) ? "schema net is gone" : "the database is gone");
      }
    }
    for (const name of withNet) {
      if (!this.#members.has(name)) {
        this.#log.info("serving a database that has schema net", { database: name });
        await this.add({ ...target, ...databaseIn(target, name) }, name, { retry: true });
      }
    }
  }

  #resize(): void {
    const { settings } = resolveSettings({ flags: this.#options.flags, env: this.#options.env });
    this.window.resize(settings.concurrency);
  }

  async #each(action: (worker: Worker) => Promise<void>): Promise<void> {
    // a database still waiting for its first connection has no worker running: it reads its settings when it starts
    const running = this.served().filter((m) => !m.pending);
    const results = await Promise.allSettled(running.map((m) => action(m.worker)));
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }
}

/** The same server, another database: a URL's path, or the database name with the rest from PG* variables. */
export function databaseIn(target: Target, name: string): Target {
  if (target.url) {
    const url = new URL(target.url);
    url.pathname = `/${encodeURIComponent(name)}`;
    return { url: url.toString() };
  }
  return { database: name };
}

/** pg_net.database_name as the server's postgres database sees it; postgres when unset, as in pg_net. */
async function databaseNameSetting(admin: Sql): Promise<string> {
  const [row] = await admin`select current_setting('pg_net.database_name', true) as name`;
  return (row?.name as string | null) || "postgres";
}

/** host:port/database of a target, without credentials. */
export function where(target: Target): string {
  const probe = connect(target, { max: 1 });
  const text = describe(probe);
  void probe.end({ timeout: 0 });
  return text;
}

/** A URL naming a server and no database (postgres://host:5432 or …/): pg_net.database_name chooses. */
export function namesNoDatabase(target: Target): boolean {
  if (!target.url) return false;
  try {
    const path = new URL(target.url).pathname;
    return path === "" || path === "/";
  } catch {
    return false;
  }
}

/**
 * Names for the databases served, in logs, /status and the `database` label: each database's name, or
 * host:port/name for names that two servers share.
 */
export function databaseLabels(targets: Target[]): string[] {
  const places = targets.map(where);
  const names = places.map((p) => p.slice(p.lastIndexOf("/") + 1));
  return names.map((name, i) => names.filter((n) => n === name).length > 1 ? places[i]! : name);
}

/** Whether a database has pgnet's queue (schema net as pgnet installs it); false when it cannot be reached. */
async function hasSchemaNet(target: Target): Promise<boolean> {
  const sql = connect(target, { max: 1, connect_timeout: 10 });
  try {
    const [row] = await sql`select pg_catalog.to_regclass('net.http_request_queue') is not null as present`;
    return row?.present === true;
  } catch {
    return false;
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {});
  }
}
