// Timers a worker can cancel all at once, and the backoff used for reconnects and retried statements.

/**
 * Reconnect and retry delays: capped, jittered, exponential. Attempt n waits
 * min(10 s, 100 ms · 2^n) · [0.5, 1): about 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, then 10 s at most.
 */
export function backoffMs(attempt: number): number {
  return Math.min(10_000, 100 * 2 ** attempt) * (0.5 + Math.random() / 2);
}

/** Every timer and sleep of one owner; `clear()` cancels them together (shutdown). */
export class Timers {
  #timers = new Map<ReturnType<typeof setTimeout>, () => void>();
  #cleared = false;

  /** Runs `fn` after `ms`, unless cleared first. */
  after(ms: number, fn: () => unknown): void {
    if (this.#cleared) return;
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      void fn();
    }, ms);
    this.#timers.set(timer, () => {});
  }

  /** Resolves after `ms`, or at once when cleared. */
  sleep(ms: number): Promise<void> {
    if (this.#cleared) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        resolve();
      }, ms);
      this.#timers.set(timer, resolve);
    });
  }

  /** Cancels every pending timer; sleeps resolve at once. Later calls to after() and sleep() do nothing. */
  clear(): void {
    this.#cleared = true;
    for (const [timer, wake] of this.#timers) {
      clearTimeout(timer);
      wake();
    }
    this.#timers.clear();
  }
}
