// Where the worker's claims start reading the queue. The queue is read by id in its primary key, and the entries
// of rows a claim moved out stay in that index until VACUUM: a claim starting at the head walks every one of them.
// Measured, 1,000,000 requests queued and drained (PostgreSQL 18, 2 cores): a claim of 200 rows read 2,400
// buffers at the start and 3,700 after 900,000 had gone, 4.4 → 7.5 ms, until autovacuum cleaned the index.
// A claim that passes over full hosts (limits.ts) reads their rows' URLs to find the host, 2.5 µs a row.
//
// So claims go on from where the last one stopped: `after` is an id up to which every queued row, when a claim
// read it, was claimed (the head) or for a host that claim passed over (the pass). Rows can appear behind it:
// - a request committed after later ids were claimed (an id is taken at insert, the row seen at commit): its
//   transaction's wake notification carries its first id (sql/0012), and lower() moves both points before it;
// - a row inserted directly, which sends no notification, a row another worker had locked and gave up, a row
//   inserted with an id still in use in net._http_claim: each point starts over from the head after REWIND_POLLS
//   poll intervals.
// A payload that is not an id (net.retry(), net.wake(), an older schema, anyone's pg_notify) starts both over.

/** The head of the queue: before every id, negative ones too (a direct insert may choose its own). */
const HEAD = -(2n ** 63n);

/** Where a claim starts reading the queue (after this id), and the full hosts it passes over. */
export interface QueueRead {
  after: string;
  hosts: readonly string[];
}

/** A claim of any row from the head. */
export const FROM_HEAD: QueueRead = { after: String(HEAD), hosts: [] };

/** What a claim read: queued rows, and the id up to which each was claimed or passed over (null: none). */
export interface ReadResult {
  rows: number;
  after: string | null;
}

/**
 * Each point starts over from the head after this many poll intervals: a minute by default. Past a million queued
 * requests for one full host that is 100 claims of QUEUE_SCAN_ROWS rows a minute, about 2.5 s of PostgreSQL's time.
 */
export const REWIND_POLLS = 12;

interface Point {
  after: bigint;
  since: number;
}

export class QueueCursor {
  readonly #rewindMs: () => number;
  readonly #now: () => number;
  #head: Point;
  /** the pass over `hosts`: valid for a claim passing over the same hosts or more */
  #pass: (Point & { hosts: readonly string[] }) | null = null;
  /** the lowest point notified since the claim in progress began: its result cannot go past it */
  #floor: bigint | null = null;

  /** `rewindMs`: how long a point is kept (REWIND_POLLS poll intervals) */
  constructor(rewindMs: () => number, now: () => number = Date.now) {
    this.#rewindMs = rewindMs;
    this.#now = now;
    this.#head = { after: HEAD, since: now() };
  }

  /** Where the next claim starts, passing over `hosts` (none: a claim of any row). */
  next(hosts: readonly string[]): QueueRead {
    this.#floor = null;
    const now = this.#now();
    const fresh = (point: Point) => now - point.since < this.#rewindMs();
    if (!fresh(this.#head)) this.#head = { after: HEAD, since: now };
    if (hosts.length === 0) return { after: String(this.#head.after), hosts };
    const pass = this.#pass;
    if (!pass || !fresh(pass) || !pass.hosts.every((host) => hosts.includes(host))) {
      // from the head: every row before it was claimed, whatever its host
      this.#pass = { after: this.#head.after, since: now, hosts };
    } else this.#pass = { ...pass, hosts };
    return { after: String(this.#pass.after), hosts };
  }

  /** What the claim that began at `read` (the last next()) read. */
  advance(read: QueueRead, result: ReadResult): void {
    if (result.after === null) return;
    let after = BigInt(result.after);
    if (this.#floor !== null && this.#floor < after) after = this.#floor;
    const point = read.hosts.length === 0 ? this.#head : this.#pass;
    if (point && after > point.after) point.after = after;
  }

  /** A wake notification's payload: the first id of a committed transaction, from which rows may be new. */
  lower(payload: string): void {
    const id = /^[1-9][0-9]{0,18}$/.test(payload) ? BigInt(payload) - 1n : HEAD;
    if (this.#floor === null || id < this.#floor) this.#floor = id;
    if (id < this.#head.after) this.#head.after = id;
    if (this.#pass && id < this.#pass.after) this.#pass.after = id;
  }

  /** Both points back to the head (the queue may be a new one, its ids starting over). */
  reset(): void {
    this.#head = { after: HEAD, since: this.#now() };
    this.#pass = null;
    this.#floor = null;
  }
}
