// The result writer: buffers finished results and stores them in statements bounded in rows and bytes, so a
// write always makes progress. Results that finish during a write go into the next one (group commit), and while
// other requests are still running a result waits a little (--write-delay) for them to share its write.

import type { Hold } from "./budget.ts";
import { errorCode } from "./errors.ts";
import type { Queue, Reschedule, ResponseRow } from "./queue.ts";
import { backoffMs, Timers } from "./timers.ts";

// Rows stored per write statement at most; bytes are bounded by --max-write-size. Measured, 10,000 requests to a
// local target: 139 claim and 157 write statements (about 64 rows a write, 3 statements per 100 requests); one
// request at a time, a write carries one row.
const WRITE_ROWS = 1000;

// SQLSTATEs meaning schema net, or part of it, is not there: undefined_table, invalid_schema_name,
// undefined_function, undefined_column, undefined_object
export const SCHEMA_MISSING = new Set(["42P01", "3F000", "42883", "42703", "42704"]);

// Failures caused by the data of some row, which retrying cannot fix: data exceptions (22: invalid text, values
// out of range), integrity violations (23: a constraint the owner added), program limits (54: jsonb or row
// size), and errors raised by a trigger (P0, 2F, 38, 39). Anything else (the connection, a restart, a lock or
// statement timeout, permissions) is the database's state, not the data's: retried as it is.
const DATA_CLASSES = new Set(["22", "23", "54", "P0", "2F", "38", "39"]);
const LOCK_NOT_AVAILABLE = "55P03";

/**
 * A result on its way to the database, with the memory it holds until it is stored; or, with `retry`, a request
 * going back to the queue for another attempt (its row then only names it, and an error row replaces it if the
 * database refuses the retry).
 */
interface Item {
  row: ResponseRow;
  hold: Hold | null;
  /** bytes it adds to a write statement */
  bytes: number;
  retry?: Reschedule;
  /** when it was handed over (performance.now()); unset for an error row a refused write hands back */
  at?: number;
}

export interface WriterOptions {
  /** the queue to write through (replaced when the worker reconnects); throws while there is none */
  queue(): Queue;
  maxWriteBytes(): number;
  /** how long a result may wait for others to share its write, while requests are running (0: never) */
  writeDelayMs(): number;
  /** requests of this worker still running (claimed, without an outcome yet) */
  running(): number;
  /** a write failed; `message` says what happens next */
  onFail(message: string, error: unknown): void;
  /** rows were stored */
  onStored(rows: readonly ResponseRow[]): void;
  /** requests went back to the queue; the first is due in `delayMs` */
  onRescheduled(delayMs: number): void;
}

export class Writer {
  readonly #options: WriterOptions;
  readonly #timers = new Timers();
  #pending: Item[] = [];
  /** the bytes of #pending */
  #pendingBytes = 0;
  /** results whose queue row another session holds locked: retried one at a time, apart from the rest */
  #locked: Item[] = [];
  #writing: Promise<void> | null = null;
  #deadline = Number.POSITIVE_INFINITY;
  /** ends the wait before a write at once (the last running request finished, the next write is full, stop) */
  #hurry: (() => void) | null = null;
  #lost = 0;
  #droppedWithSchema = 0;

  constructor(options: WriterOptions) {
    this.#options = options;
  }

  /** results waiting to be stored */
  get pending(): number {
    return this.#pending.length + this.#locked.length;
  }

  /** ids of results waiting to be stored (their leases are renewed until they are) */
  ids(): string[] {
    return [...this.#pending, ...this.#locked].map((item) => item.row.id);
  }

  /** results given up: at shutdown, or because even an error row for them could not be stored */
  get lost(): number {
    return this.#lost;
  }

  get busy(): boolean {
    return this.#writing !== null || this.pending > 0;
  }

  push(row: ResponseRow, hold: Hold | null = null): void {
    this.#add({ row, hold, bytes: rowBytes(row) });
  }

  /** Queues a request again for its next attempt. */
  reschedule(retry: Reschedule): void {
    const row: ResponseRow = {
      id: retry.id,
      status_code: null,
      content_type: null,
      headers: null,
      content: null,
      timed_out: false,
      error_msg: retry.failure,
      body: null,
    };
    this.#add({ row, hold: null, bytes: 128 + retry.failure.length, retry });
  }

  #add(item: Item): void {
    item.at = performance.now();
    this.#pending.push(item);
    this.#pendingBytes += item.bytes;
    if (this.#hurry && !this.#mayWait()) this.#hurry();
    this.#writing ??= this.#flush();
  }

  /** Resolves once every result pushed so far is stored (or given up during shutdown). */
  async drained(): Promise<void> {
    while (this.busy) await (this.#writing ??= this.#flush());
  }

  /** Keeps retrying until `deadline` (Date.now() ms), then gives up what is left, saying so. */
  async stop(deadline: number): Promise<void> {
    this.#deadline = deadline;
    this.#hurry?.();
    await this.drained();
    this.#timers.clear();
  }

  async #flush(): Promise<void> {
    let failures = 0;
    try {
      while (this.pending > 0) {
        await this.#wait();
        const batch = this.#pending.length > 0 ? this.#take() : [this.#locked.shift()!];
        const retry = await this.#write(batch);
        if (retry.length === 0) {
          failures = 0;
          continue;
        }
        this.#pending.unshift(...retry);
        this.#pendingBytes += retry.reduce((sum, item) => sum + item.bytes, 0);
        if (Date.now() + 100 >= this.#deadline) {
          this.#giveUp();
          return;
        }
        await this.#timers.sleep(Math.min(backoffMs(failures++), Math.max(0, this.#deadline - Date.now())));
      }
    } finally {
      this.#writing = null;
    }
  }

  /**
   * Whether the next write may wait for more results: requests are still running, the oldest result waiting has
   * waited less than --write-delay, the write is not full, and the writer is not stopping. One request at a time
   * is written at once (nothing else is running); so is a burst's last result.
   */
  #mayWait(): boolean {
    const oldest = this.#pending[0];
    if (!oldest || this.#deadline !== Number.POSITIVE_INFINITY || this.#options.running() === 0) return false;
    if (this.#pending.length >= WRITE_ROWS) return false;
    if (this.#pendingBytes >= this.#options.maxWriteBytes()) return false;
    return oldest.at !== undefined && performance.now() - oldest.at < this.#options.writeDelayMs();
  }

  /** Waits before a write while #mayWait() says so: until the oldest result's delay is over, or hurried. */
  async #wait(): Promise<void> {
    while (this.#mayWait()) {
      const ms = this.#pending[0]!.at! + this.#options.writeDelayMs() - performance.now();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.#hurry = null;
          resolve();
        }, Math.max(0, ms));
        this.#hurry = () => {
          clearTimeout(timer);
          this.#hurry = null;
          resolve();
        };
      });
    }
  }

  /** The next statement's rows: up to WRITE_ROWS and --max-write-size; a result larger than that goes alone. */
  #take(): Item[] {
    const limit = this.#options.maxWriteBytes();
    let bytes = 0;
    let count = 0;
    for (const item of this.#pending) {
      if (count === WRITE_ROWS || (count > 0 && bytes + item.bytes > limit)) break;
      bytes += item.bytes;
      count++;
    }
    this.#pendingBytes -= bytes;
    return this.#pending.splice(0, count);
  }

  /**
   * Writes `batch`, splitting it when a row's data is refused, until each refused row is found and stored as an
   * error row saying why. Returns what has to be retried as it is (the database is unavailable).
   */
  async #write(batch: Item[]): Promise<Item[]> {
    const queue = this.#options.queue();
    const stored = batch.filter((item) => !item.retry);
    try {
      const retries = batch.flatMap((item) => (item.retry ? [item.retry] : []));
      if (retries.length > 0) await queue.reschedule(retries);
      const rows = stored.map((item) => item.row);
      const bytes = stored.reduce((sum, item) => sum + item.bytes, 0);
      if (rows.length > 0) {
        if (bytes / rows.length > 4096 || rows.some((row) => row.body !== null)) await queue.storeRows(rows);
        else await queue.store(rows);
      }
      if (retries.length > 0) this.#options.onRescheduled(Math.min(...retries.map((r) => r.delayMs)));
    } catch (error) {
      const code = errorCode(error) ?? "";
      if (SCHEMA_MISSING.has(code)) {
        // their queue rows went with the schema; a new install restarts ids at 1, so never store them there.
        // Said once, however many writes find it gone; the count comes when writes succeed again.
        if (this.#droppedWithSchema === 0) {
          this.#options.onFail("schema net is gone: dropping the results of requests it held", error);
        }
        this.#droppedWithSchema += batch.length;
        this.#done(batch);
        return [];
      }
      const refused = DATA_CLASSES.has(code.slice(0, 2));
      if (batch.length > 1 && (refused || code === LOCK_NOT_AVAILABLE)) {
        const half = Math.ceil(batch.length / 2);
        return [...await this.#write(batch.slice(0, half)), ...await this.#write(batch.slice(half))];
      }
      if (code === LOCK_NOT_AVAILABLE) {
        this.#options.onFail(`request ${batch[0]!.row.id}'s queue row is locked by another session: retrying`, error);
        this.#locked.push(batch[0]!);
        return [];
      }
      if (!refused) {
        this.#options.onFail("cannot store responses: retrying", error);
        return batch;
      }
      return await this.#storeRefused(batch[0]!, error);
    }
    this.#done(batch);
    if (this.#droppedWithSchema > 0) {
      this.#options.onFail(
        `dropped ${this.#droppedWithSchema} results while schema net was gone`,
        new Error("their requests went with the schema"),
      );
      this.#droppedWithSchema = 0;
    }
    if (stored.length > 0) this.#options.onStored(stored.map((item) => item.row));
    return [];
  }

  /** The database refused this result's data: store an error row that says why instead. */
  async #storeRefused(item: Item, cause: unknown): Promise<Item[]> {
    const message = `The response could not be stored: ${(cause as Error).message} (SQLSTATE ${errorCode(cause)})`;
    this.#options.onFail(`request ${item.row.id}: response refused by the database, storing an error row`, cause);
    const row: ResponseRow = {
      id: item.row.id,
      status_code: null,
      content_type: null,
      headers: null,
      content: null,
      timed_out: false,
      error_msg: message,
      body: null,
    };
    try {
      await this.#options.queue().storeRows([row]);
    } catch (error) {
      if (!DATA_CLASSES.has((errorCode(error) ?? "").slice(0, 2))) {
        return [{ hold: item.hold, row, bytes: rowBytes(row) }];
      }
      this.#lost++;
      this.#options.onFail(`request ${item.row.id}: even an error row was refused; its result is lost`, error);
      this.#done([item]);
      return [];
    }
    this.#done([item]);
    this.#options.onStored([row]);
    return [];
  }

  #done(items: Item[]): void {
    for (const item of items) item.hold?.release();
  }

  #giveUp(): void {
    const items = [...this.#pending, ...this.#locked];
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#locked = [];
    this.#lost += items.length;
    const ids = items.map((item) => item.row.id);
    this.#options.onFail(
      `shutting down with ${ids.length} results not stored; their requests stay queued and will be sent again`,
      new Error(`request ids ${ids.slice(0, 20).join(", ")}${ids.length > 20 ? ", …" : ""}`),
    );
    this.#done(items);
  }
}

/** What a row adds to a write statement, roughly: its body and headers, and a little for the rest. */
function rowBytes(row: ResponseRow): number {
  let bytes = 128 + (row.content?.length ?? 0) + (row.error_msg?.length ?? 0) + 2 * (row.body?.byteLength ?? 0);
  if (row.headers) { for (const name in row.headers) bytes += name.length + row.headers[name]!.length + 6; }
  return bytes;
}
