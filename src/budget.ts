// The memory budget: bytes of bodies held at once, in flight and waiting to be stored. When it is reached,
// new requests wait (they are not failed) and bodies stop being read until memory is given back.

import type { BodyRoom } from "./http.ts";

/**
 * What every request holds before it starts, beyond its own URL, headers and body: room for a response body of up
 * to 8 KiB (counted twice, see Hold), so a typical webhook answer never waits. 2,048 in flight hold 32 MiB.
 */
export const REQUEST_RESERVE = 16 * 1024;

const HOSTS_REMEMBERED = 10_000;

/**
 * Recent response sizes per host, so that a request is charged what its host's responses take before it starts.
 * Charging at the start matters: once a response arrives, the runtime reads ahead on its connection before
 * pgnet can pause it (measured on Bun 1.4: about 0.6 MiB per paused 1 MiB response, even on a raw socket), so
 * a budget that counted bodies only as they were read would let a thousand large responses in at once. Each
 * host keeps a decaying maximum: a larger answer raises it at once, each answer lowers it by a tenth. A host not
 * heard from yet is charged the same kind of maximum over all hosts: small where responses are small (so slow
 * endpoints are never throttled by a guess), large once large responses are about.
 */
export class ResponseSizes {
  #sizes = new Map<string, number>();
  #any = 0;

  record(host: string, bytes: number): void {
    const previous = this.#sizes.get(host);
    this.#sizes.delete(host); // re-inserted last: the map's order is least recently answered first
    this.#sizes.set(host, previous === undefined ? bytes : Math.max(bytes, Math.floor(previous * 0.9)));
    if (this.#sizes.size > HOSTS_REMEMBERED) this.#sizes.delete(this.#sizes.keys().next().value!);
    this.#any = Math.max(bytes, Math.floor(this.#any * 0.9));
  }

  /** What a request of `requestBytes` to `host` (null: not known yet) holds before it starts. */
  charge(host: string | null, requestBytes: number): number {
    const response = (host === null ? undefined : this.#sizes.get(host)) ?? this.#any;
    return requestBytes + Math.max(REQUEST_RESERVE, 2 * response);
  }
}

/** The scheme and authority of a URL, lower-cased (`http://api.example.com:8080`), without parsing it fully. */
export function hostKey(url: string): string {
  // the authority ends at the first / ? or # after "https://" (8 characters; "http://" plus one of the host)
  const end = url.slice(8).search(/[/?#]/);
  return (end === -1 ? url : url.slice(0, end + 8)).toLowerCase();
}

interface Waiter {
  bytes: number;
  hold: Hold | null;
  grant(): void;
}

/**
 * A byte semaphore granted in arrival order: a request never overtakes an earlier one that is waiting, so a
 * large body is not starved by a stream of small ones. One exception keeps it from wedging: when every byte
 * held belongs to requests that are themselves waiting, nothing would ever be given back, so the first waiter
 * is granted anyway and the budget is exceeded by that one grant.
 */
export class MemoryBudget {
  readonly capacity: number;
  #used = 0;
  #heldByWaiters = 0;
  #waiters: Waiter[] = [];
  #onRoom: () => void;

  /** `onRoom` is called when memory comes back and nobody is waiting for it: time to start more requests. */
  constructor(capacity: number, onRoom: () => void = () => {}) {
    this.capacity = capacity;
    this.#onRoom = onRoom;
  }

  get used(): number {
    return this.#used;
  }

  get waiting(): number {
    return this.#waiters.length;
  }

  /** How many requests of `bytes` each could start now (0 while anyone waits). */
  roomFor(bytes: number): number {
    if (this.#waiters.length > 0) return 0;
    return Math.max(0, Math.floor((this.capacity - this.#used) / bytes));
  }

  /** Takes `bytes` now if they fit and nobody waits before us. */
  tryTake(bytes: number): boolean {
    if (this.#waiters.length > 0 || this.#used + bytes > this.capacity) return false;
    this.#used += bytes;
    return true;
  }

  /** Resolves once `bytes` are taken, after every earlier waiter. `hold` is what the waiter already holds. */
  take(bytes: number, hold: Hold | null = null): Promise<void> {
    if (this.tryTake(bytes)) return Promise.resolve();
    return new Promise((grant) => {
      this.#waiters.push({ bytes, hold, grant });
      this.#heldByWaiters += hold?.bytes ?? 0;
      this.#grant();
    });
  }

  give(bytes: number): void {
    this.#used -= bytes;
    this.#grant();
    if (this.#waiters.length === 0) this.#onRoom();
  }

  #grant(): void {
    while (this.#waiters.length > 0) {
      const head = this.#waiters[0]!;
      const stuck = this.#used === this.#heldByWaiters;
      if (this.#used + head.bytes > this.capacity && !stuck) return;
      this.#waiters.shift();
      this.#heldByWaiters -= head.hold?.bytes ?? 0;
      this.#used += head.bytes;
      head.grant();
    }
  }
}

/**
 * One request's share of the budget, from claim until its result is stored. A response body counts twice: as
 * bytes while it arrives, then as text until it is stored (the driver copies it once more as it sends, briefly).
 */
export class Hold implements BodyRoom {
  readonly #budget: MemoryBudget;
  /** the request's own URL, headers and body */
  readonly #request: number;
  #bytes: number;
  /** response body bytes received so far */
  bodyBytes = 0;

  /** `bytes` (at least `requestBytes` plus REQUEST_RESERVE) must already be taken from the budget. */
  constructor(budget: MemoryBudget, requestBytes: number, bytes: number) {
    this.#budget = budget;
    this.#request = requestBytes;
    this.#bytes = bytes;
  }

  get bytes(): number {
    return this.#bytes;
  }

  reserve(total: number, expected: number | null): Promise<void> | void {
    this.bodyBytes = total;
    // with a known length, all of it at once; otherwise doubling, so a long body asks a few times, not per chunk
    const body = 2 * (expected ?? Math.min(2 * total, total + 1_048_576));
    const want = this.#request + Math.max(REQUEST_RESERVE, body);
    if (want <= this.#bytes) return;
    const more = want - this.#bytes;
    const granted = this.#budget.take(more, this);
    return granted.then(() => {
      this.#bytes += more;
    });
  }

  /** Gives back all but `bytes` (after the request: what its result still needs). */
  shrink(bytes: number): void {
    if (bytes >= this.#bytes) return;
    this.#budget.give(this.#bytes - bytes);
    this.#bytes = bytes;
  }

  release(): void {
    this.shrink(0);
  }
}
