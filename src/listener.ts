// The LISTEN session: one connection subscribed to the wake and control channels, re-subscribed with backoff
// after it drops, with a catch-up call after every (re)subscription because notifications sent meanwhile are lost.

import { connect, type ConnectOptions, type Sql, type Target } from "./db.ts";
import { backoffMs, type Timers } from "./timers.ts";
import { WORKER_APPLICATION_NAME } from "./version.ts";

/** NOTIFY channels: net.wake() and net.worker_restart() (sql/0001_net_api.sql). */
export const WAKE_CHANNEL = "pgnet_wake";
export const CONTROL_CHANNEL = "pgnet_control";

export interface ListenerOptions {
  target: Target;
  /** extra startup parameters for the session */
  connection?: Record<string, string | number>;
  timers: Timers;
  onNotify(channel: string, payload: string): void;
  /** subscribed (again): look for work that arrived while nobody listened */
  onListen(): void;
  onFail(message: string, error: unknown): void;
  /** re-subscribed after the connection dropped */
  onReconnect(): void;
}

export class Listener {
  readonly #options: ListenerOptions;
  readonly #sql: Sql;
  #listening = false;
  #closed = false;
  /** a re-subscription is under way: a connection that fails while it tries closes too, and must not start another */
  #relistening = false;

  constructor(options: ListenerOptions) {
    this.#options = options;
    this.#sql = connect(options.target, {
      max: 1,
      connect_timeout: 10,
      idle_timeout: 0,
      max_lifetime: null,
      connection: { ...options.connection, application_name: WORKER_APPLICATION_NAME },
      onnotify: (channel: string, payload: string) => options.onNotify(channel, payload),
      onclose: () => {
        this.#listening = false;
        if (!this.#closed && !this.#relistening) {
          this.#relistening = true;
          this.#relisten(0);
        }
      },
    } as ConnectOptions);
  }

  /** true while subscribed */
  get listening(): boolean {
    return this.#listening;
  }

  /** Subscribes; rejects when the first connection fails. */
  async start(): Promise<void> {
    await this.#listen();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#listening = false;
    await this.#sql.end({ timeout: 5 }).catch(() => {});
  }

  async #listen(): Promise<void> {
    await this.#sql`listen ${this.#sql(WAKE_CHANNEL)}`;
    await this.#sql`listen ${this.#sql(CONTROL_CHANNEL)}`;
    if (this.#closed) return;
    this.#listening = true;
    this.#options.onListen();
  }

  #relisten(attempt: number): void {
    this.#options.timers.after(backoffMs(attempt), async () => {
      if (this.#closed) return;
      try {
        await this.#listen();
        this.#relistening = false;
        this.#options.onReconnect();
      } catch (error) {
        this.#options.onFail("cannot listen for notifications", error);
        this.#relisten(attempt + 1);
      }
    });
  }
}
