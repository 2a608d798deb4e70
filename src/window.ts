// The window: how many requests may be in flight at once (--concurrency), shared by every database a pgnet
// process serves, and split fairly between those that have work.
//
// Each database's worker holds a Share. A share may start requests while the window has free slots and it holds
// fewer than its fair part: the capacity divided among the shares that are busy (requests in flight, or more
// waiting in their queue). Alone, a database has the whole window; when a second one has work, the first takes no
// new slots until it holds less than half, and every slot it frees wakes the shares that were kept waiting. So a
// backlog of a million requests in one database delays another database's requests by at most the time the
// first takes to finish a few of its own, not by its backlog. Two shares deciding at the same moment can go
// past the capacity by what they take at that moment, briefly; no share ever holds more than its fair part of it
// while others wait.

export class RequestWindow {
  #capacity: number;
  #used = 0;
  readonly #shares = new Set<Share>();

  constructor(capacity: number) {
    this.#capacity = capacity;
  }

  get capacity(): number {
    return this.#capacity;
  }

  get used(): number {
    return this.#used;
  }

  /** A new capacity (a reload): shares holding more than the new fair part take nothing until they are under it. */
  resize(capacity: number): void {
    const grew = capacity > this.#capacity;
    this.#capacity = capacity;
    if (grew) this.#wake();
  }

  /** A share for one database's worker; `wake` is called when slots it was waiting for may be free. */
  join(wake: () => void): Share {
    const share = new Share(this, wake);
    this.#shares.add(share);
    return share;
  }

  /** @internal */
  leave(share: Share): void {
    this.#used -= share.active;
    this.#shares.delete(share);
    this.#wake();
  }

  /** @internal the slots `share` may take now */
  roomFor(share: Share): number {
    let busy = 0;
    for (const s of this.#shares) if (s === share || s.active > 0 || s.waiting) busy++;
    const fair = Math.max(1, Math.floor(this.#capacity / busy));
    return Math.max(0, Math.min(this.#capacity - this.#used, fair - share.active));
  }

  /** @internal */
  taken(n: number): void {
    this.#used += n;
  }

  /** @internal */
  given(n: number): void {
    this.#used -= n;
    this.#wake();
  }

  #wake(): void {
    if (this.#used >= this.#capacity) return;
    for (const share of this.#shares) {
      if (share.waiting) {
        share.waiting = false;
        share.wake();
      }
    }
  }
}

export class Share {
  /** requests this share has started and not finished */
  active = 0;
  /** it found no room with work waiting: woken when a slot frees */
  waiting = false;

  constructor(readonly window: RequestWindow, readonly wake: () => void) {}

  /** How many requests may start now; when none may and work is waiting, the share waits for a wake. */
  room(workWaiting: boolean): number {
    const room = this.window.roomFor(this);
    this.waiting = room === 0 && workWaiting;
    return room;
  }

  take(): void {
    this.active++;
    this.window.taken(1);
  }

  give(): void {
    this.active--;
    this.window.given(1);
  }

  leave(): void {
    this.window.leave(this);
    this.active = 0;
    this.waiting = false;
  }
}
