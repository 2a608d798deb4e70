// Per-host limits: how many requests one host may have in flight, and how many it may be sent per second
// (a token bucket). A request over a limit waits here, in arrival order within its host, without holding one of
// the window's slots; other hosts are not held up. Hosts that cannot take more are left out of claims.

/** One --host-limits rule: hosts matching `pattern` get these limits instead of the defaults. */
export interface HostRule {
  /** "api.example.com", "*.example.com" (its subdomains), or "*" (every host) */
  pattern: string;
  /** requests in flight to one matching host at most */
  concurrency?: number;
  /** requests started per second at most, to one matching host */
  rate?: number;
  /** requests that may start at once before the rate applies (1 unless given) */
  burst?: number;
}

export interface HostLimitSettings {
  /** requests in flight to any one host at most, unless a rule says otherwise */
  concurrency: number;
  rules: readonly HostRule[];
}

const RATE_MARGIN = 0.98;

interface Limit {
  concurrency: number;
  rate: number | null;
  burst: number;
}

interface HostState {
  limit: Limit;
  active: number;
  waiting: (() => void)[];
  /** token bucket: tokens left at `refilledAt` (performance.now()) */
  tokens: number;
  refilledAt: number;
  timer: ReturnType<typeof setTimeout> | null;
}

// the host of an absolute URL, as sql/0006's net._url_host() finds it: after the scheme and any user info, up to
// the port, path, query or fragment; an IPv6 literal keeps its brackets
const HOST = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/(?:[^/?#@]*@)?(\[[^\]/?#]*\]|[^:/?#]*)/;

/** The host name a URL is limited under, lower-cased ("api.example.com", "[::1]"); "" when there is none. */
export function urlHost(url: string): string {
  return HOST.exec(url)?.[1]?.toLowerCase() ?? "";
}

/** Whether `host` matches a rule's pattern. */
export function matches(pattern: string, host: string): boolean {
  if (pattern === "*") return true;
  if (pattern.startsWith("*.")) return host.endsWith(pattern.slice(1));
  return host === pattern;
}

/** The first rule whose pattern matches `host`, as --host-limits applies them. */
export function ruleFor(rules: readonly HostRule[], host: string): HostRule | undefined {
  return rules.find((rule) => matches(rule.pattern, host));
}

/**
 * Parses --host-limits: rules separated by ";" or whitespace, each PATTERN=KEY:VALUE[,KEY:VALUE…] with keys
 * concurrency, rate (per second, may be fractional) and burst, e.g.
 * "api.stripe.com=rate:25,concurrency:10; *.slack.com=rate:1". The first matching rule applies.
 */
export function parseHostRules(text: string): HostRule[] {
  const rules: HostRule[] = [];
  for (const entry of text.split(/[;\s]+/).filter(Boolean)) {
    const eq = entry.indexOf("=");
    const pattern = entry.slice(0, eq).toLowerCase();
    if (eq <= 0 || !/^(\*|(\*\.)?[a-z0-9.[\]:_-]+)$/.test(pattern)) {
      throw new RangeError(`expected PATTERN=concurrency:N,rate:N in "${entry}" (a host, *.domain or *)`);
    }
    const rule: HostRule = { pattern };
    for (const part of entry.slice(eq + 1).split(",")) {
      const [key, value = ""] = part.split(":");
      const number = /^\d+(\.\d+)?$/.test(value) ? Number(value) : NaN;
      if (key === "rate" && number > 0 && number <= 1_000_000) rule.rate = number;
      else if (
        (key === "concurrency" || key === "burst") && Number.isInteger(number) && number >= 1 && number <= 65535
      ) {
        rule[key] = number;
      } else {
        throw new RangeError(
          `"${part}" in "${entry}": expected concurrency:N (1–65535), rate:N per second (up to 1000000) or burst:N`,
        );
      }
    }
    rules.push(rule);
  }
  return rules;
}

export class HostLimits {
  #settings: HostLimitSettings;
  readonly #hosts = new Map<string, HostState>();
  readonly #onAvailable: () => void;

  /** `onAvailable` is called when a host that claims left out can take requests again. */
  constructor(settings: HostLimitSettings, onAvailable: () => void) {
    this.#settings = settings;
    this.#onAvailable = onAvailable;
  }

  /** New limits (reload): hosts with requests in flight keep counting them; waiters start if the limit grew. */
  update(settings: HostLimitSettings): void {
    this.#settings = settings;
    for (const [host, state] of this.#hosts) {
      const wasFull = this.#full(state);
      state.limit = this.#limitFor(host);
      state.tokens = Math.min(state.tokens, state.limit.burst);
      this.#dispatch(host, state, wasFull);
    }
  }

  /**
   * Takes a place for a request to `host`: at once (returns null) when the host is under its limits, otherwise
   * a promise that resolves when the request's turn comes. Each place is given back with release().
   */
  acquire(host: string): Promise<void> | null {
    const state = this.#state(host);
    if (state.waiting.length === 0 && this.#tryStart(state)) return null;
    return new Promise((resolve) => {
      state.waiting.push(resolve);
      this.#schedule(host, state);
    });
  }

  release(host: string): void {
    const state = this.#hosts.get(host);
    if (!state) return;
    const wasFull = this.#full(state);
    state.active--;
    this.#dispatch(host, state, wasFull);
  }

  /** Hosts that cannot take another request now: claims leave their rows in the queue. */
  saturated(): string[] {
    const hosts: string[] = [];
    for (const [host, state] of this.#hosts) if (this.#full(state)) hosts.push(host);
    return hosts;
  }

  /** Requests waiting for their host's limits. */
  get waiting(): number {
    let count = 0;
    for (const state of this.#hosts.values()) count += state.waiting.length;
    return count;
  }

  /** Stops the rate timers; waiters are left waiting (the worker gives their requests back). */
  clear(): void {
    for (const state of this.#hosts.values()) if (state.timer) clearTimeout(state.timer);
    this.#hosts.clear();
  }

  #full(state: HostState): boolean {
    return state.waiting.length > 0 || state.active >= state.limit.concurrency;
  }

  #state(host: string): HostState {
    let state = this.#hosts.get(host);
    if (!state) {
      const limit = this.#limitFor(host);
      state = { limit, active: 0, waiting: [], tokens: limit.burst, refilledAt: performance.now(), timer: null };
      this.#hosts.set(host, state);
    }
    return state;
  }

  #limitFor(host: string): Limit {
    const rule = ruleFor(this.#settings.rules, host);
    return {
      concurrency: rule?.concurrency ?? this.#settings.concurrency,
      // 2 % under the rate asked for: requests reach the server with some jitter on the way (the first on a new
      // connection later than the next), and a server counting arrivals must not see more than its limit. Measured
      // on loopback: 21 arrivals 992 ms apart when starts were spaced exactly 1/rate
      rate: rule?.rate === undefined ? null : rule.rate * RATE_MARGIN,
      burst: rule?.burst ?? 1,
    };
  }

  #refill(state: HostState): void {
    if (state.limit.rate === null) return;
    const now = performance.now();
    state.tokens = Math.min(state.limit.burst, state.tokens + (now - state.refilledAt) * state.limit.rate / 1000);
    state.refilledAt = now;
  }

  #tryStart(state: HostState): boolean {
    if (state.active >= state.limit.concurrency) return false;
    this.#refill(state);
    if (state.limit.rate !== null) {
      if (state.tokens < 1) return false;
      state.tokens -= 1;
    }
    state.active++;
    return true;
  }

  /** Starts waiters the limits allow; `wasFull`: the host was left out of claims before the change at hand. */
  #dispatch(host: string, state: HostState, wasFull = this.#full(state)): void {
    while (state.waiting.length > 0 && this.#tryStart(state)) state.waiting.shift()!();
    this.#schedule(host, state);
    if (state.active === 0 && state.waiting.length === 0 && state.timer === null) {
      this.#refill(state);
      if (state.limit.rate === null || state.tokens >= state.limit.burst) this.#hosts.delete(host);
    }
    if (wasFull && !this.#full(state)) this.#onAvailable();
  }

  /** With requests waiting for tokens, wakes when the next token is there. */
  #schedule(host: string, state: HostState): void {
    if (state.timer !== null || state.waiting.length === 0 || state.limit.rate === null) return;
    if (state.active >= state.limit.concurrency) return; // a release dispatches
    this.#refill(state);
    const ms = Math.max(1, Math.ceil((1 - state.tokens) * 1000 / state.limit.rate));
    state.timer = setTimeout(() => {
      state.timer = null;
      this.#dispatch(host, state);
    }, ms);
  }
}
