// The pure parts of delivery: retry decisions, the backoff schedule, Retry-After, host patterns and the
// per-host limiter's order and token bucket.

import { describe, expect, test } from "bun:test";
import { resolveSettings } from "../src/config.ts";
import { HostLimits, matches, parseHostRules, urlHost } from "../src/limits.ts";
import type { ResponseRow } from "../src/queue.ts";
import { decide, maxDelay, parseRetryPolicy, parseRetryPolicyText, retryAfterMs } from "../src/retry.ts";

const row = (fields: Partial<ResponseRow>): ResponseRow => ({
  id: "1",
  status_code: null,
  content_type: null,
  headers: null,
  content: null,
  timed_out: false,
  error_msg: null,
  body: null,
  ...fields,
});

describe("retry decisions", () => {
  const policy = parseRetryPolicy({ max_attempts: 3, backoff_ms: 1000, max_backoff_ms: 3000 })!;

  test("the default outcomes retry: connection errors, timeouts, 429 and 5xx; other 4xx and success do not", () => {
    const retried = [
      row({ error_msg: "Couldn't connect to server" }),
      row({ error_msg: "Couldn't resolve host name" }),
      row({ error_msg: "Server returned nothing (no headers, no data)" }),
      row({ timed_out: true, error_msg: "Timeout of 5000 ms reached…" }),
      row({ status_code: 429 }),
      row({ status_code: 503 }),
      row({ status_code: 500 }),
    ];
    for (const r of retried) expect(decide(policy, 1, r, null).action).toBe("retry");
    const final = [
      row({ status_code: 200 }),
      row({ status_code: 404 }),
      row({ status_code: 301 }),
      row({ error_msg: "Destination refused by pgnet's egress policy" }),
      row({ error_msg: "Response body over pgnet's --max-response-size" }),
    ];
    for (const r of final) expect(decide(policy, 1, r, null)).toEqual({ action: "store", dead: false, failure: null });
  });

  test("the last attempt's failure is stored as a dead letter; without a policy nothing is retried", () => {
    expect(decide(policy, 3, row({ status_code: 503 }), null)).toEqual({
      action: "store",
      dead: true,
      failure: "HTTP 503",
    });
    expect(decide(null, 1, row({ status_code: 503 }), null)).toEqual({ action: "store", dead: false, failure: null });
    // a policy of one attempt retries nothing, and keeps no dead letter
    const once = parseRetryPolicy({ max_attempts: 1 });
    expect(decide(once, 1, row({ status_code: 503 }), null)).toMatchObject({ action: "store", dead: false });
  });

  test("retry_on names status codes and classes", () => {
    const only = parseRetryPolicy({ retry_on: ["404", "timeout"] });
    expect(decide(only, 1, row({ status_code: 404 }), null).action).toBe("retry");
    expect(decide(only, 1, row({ status_code: 503 }), null).action).toBe("store");
    expect(decide(only, 1, row({ error_msg: "Couldn't connect to server" }), null).action).toBe("store");
    const any4xx = parseRetryPolicy({ retry_on: ["4xx"] });
    expect(decide(any4xx, 1, row({ status_code: 409 }), null).action).toBe("retry");
  });

  test("full jitter: retry n waits up to min(cap, backoff · 2^(n−1)), uniformly", () => {
    expect([1, 2, 3, 4].map((n) => maxDelay(policy, n))).toEqual([1000, 2000, 3000, 3000]);
    const top = decide(policy, 2, row({ status_code: 503 }), null, Date.now(), () => 0.999999);
    const bottom = decide(policy, 2, row({ status_code: 503 }), null, Date.now(), () => 0);
    expect(top).toMatchObject({ action: "retry", delayMs: 2000 });
    expect(bottom).toMatchObject({ action: "retry", delayMs: 0 });
  });

  test("Retry-After in seconds or as an HTTP date is honoured, up to max_retry_after_ms", () => {
    const now = Date.parse("2026-12-02T12:00:00Z");
    expect(retryAfterMs("2", now)).toBe(2000);
    expect(retryAfterMs("Wed, 02 Dec 2026 12:00:30 GMT", now)).toBe(30_000);
    expect(retryAfterMs("Wed, 02 Dec 2026 11:00:00 GMT", now)).toBe(0); // in the past: at once
    expect(retryAfterMs("soon", now)).toBeNull();
    expect(retryAfterMs("-5", now)).toBeNull();
    const capped = parseRetryPolicy({ max_retry_after_ms: 5000 });
    expect(decide(capped, 1, row({ status_code: 429 }), "3600", now)).toMatchObject({ delayMs: 5000 });
    expect(decide(capped, 1, row({ status_code: 429 }), "3", now)).toMatchObject({ delayMs: 3000 });
  });

  test("policies are checked: the flag's forms and every bad field", () => {
    expect(parseRetryPolicyText("none")).toBeNull();
    expect(parseRetryPolicyText("4")).toMatchObject({ maxAttempts: 4, backoffMs: 1000 });
    expect(parseRetryPolicyText('{"max_attempts": 2, "retry_on": ["5xx"]}')).toMatchObject({
      maxAttempts: 2,
      retryOn: ["5xx"],
    });
    for (
      const [bad, message] of [
        ["{", "expected"],
        ['{"max_attempts": 0}', "max_attempts must be an integer from 1 to 100"],
        ['{"max_attempts": 101}', "max_attempts must be an integer from 1 to 100"],
        ['{"backoff_ms": -1}', "backoff_ms must be an integer"],
        ['{"retry_on": "5xx"}', "retry_on must be an array"],
        ['{"retry_on": ["6xx"]}', "retry_on must be an array"],
        ['{"attempts": 3}', 'unknown retry policy field "attempts"'],
        ["[3]", 'expected "none" or a JSON object'],
      ]
    ) {
      expect(() => parseRetryPolicyText(bad!)).toThrow(message!);
    }
    expect(() => resolveSettings({ flags: { "retry-policy": '{"max_attempts": 0}' } })).toThrow(
      "Invalid --retry-policy: max_attempts must be an integer from 1 to 100",
    );
  });
});

describe("host limits", () => {
  test("the host of a URL, as claims filter it", () => {
    expect(urlHost("https://API.Example.com:8443/x?y#z")).toBe("api.example.com");
    expect(urlHost("http://user:pw@host.test/")).toBe("host.test");
    expect(urlHost("http://[::1]:8080/")).toBe("[::1]");
    expect(urlHost("http://127.0.0.1")).toBe("127.0.0.1");
    expect(urlHost("not a url")).toBe("");
  });

  test("patterns: a host, its subdomains with *., every host with *; --host-limits is parsed or refused", () => {
    expect(matches("*.example.com", "a.example.com")).toBe(true);
    expect(matches("*.example.com", "example.com")).toBe(false);
    expect(matches("*.example.com", "badexample.com")).toBe(false);
    expect(matches("api.example.com", "api.example.com")).toBe(true);
    expect(matches("*", "anything")).toBe(true);
    expect(parseHostRules("api.stripe.com=rate:25,concurrency:10; *.slack.com=rate:0.5,burst:3")).toEqual([
      { pattern: "api.stripe.com", rate: 25, concurrency: 10 },
      { pattern: "*.slack.com", rate: 0.5, burst: 3 },
    ]);
    for (const bad of ["api.example.com", "=rate:1", "a.com=rate:0", "a.com=speed:3", "a.com=concurrency:1.5"]) {
      expect(() => parseHostRules(bad)).toThrow();
    }
    expect(() => resolveSettings({ flags: { "host-limits": "a.com=speed:3" } })).toThrow("Invalid --host-limits");
    expect(resolveSettings({ flags: { concurrency: "100" } }).settings.hostConcurrency).toBe(25);
    expect(resolveSettings({ flags: { "host-concurrency": "50%", concurrency: "10" } }).settings.hostConcurrency)
      .toBe(5);
    expect(resolveSettings({ flags: { "host-concurrency": "7" } }).settings.hostConcurrency).toBe(7);
  });

  test("over its concurrency a host's requests wait in arrival order and start as places free", async () => {
    let available = 0;
    const limits = new HostLimits({ concurrency: 2, rules: [] }, () => available++);
    const started: number[] = [];
    const take = async (n: number) => {
      await limits.acquire("a");
      started.push(n);
    };
    const all = [1, 2, 3, 4, 5].map(take);
    await Promise.resolve();
    expect(started).toEqual([1, 2]);
    expect(limits.saturated()).toEqual(["a"]);
    expect(limits.acquire("b")).toBeNull(); // another host is not held up
    limits.release("a");
    limits.release("a");
    await Promise.resolve();
    expect(started).toEqual([1, 2, 3, 4]);
    limits.release("a");
    await Promise.all(all);
    expect(started).toEqual([1, 2, 3, 4, 5]);
    expect(limits.waiting).toBe(0);
    // full with nobody waiting (2 in flight): the first release says claims may take this host's rows again
    expect(limits.saturated()).toEqual(["a"]);
    expect(available).toBe(0);
    limits.release("a");
    expect(available).toBe(1);
    expect(limits.saturated()).toEqual([]);
  });

  test("a rate limit spaces starts 1/rate apart and tells when the host can take requests again", async () => {
    let available = 0;
    const limits = new HostLimits({ concurrency: 100, rules: [{ pattern: "*", rate: 50 }] }, () => available++);
    const times: number[] = [];
    const t0 = performance.now();
    await Promise.all(Array.from({ length: 6 }, async () => {
      await limits.acquire("h");
      times.push(performance.now() - t0);
      limits.release("h");
    }));
    for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(19);
    expect(available).toBeGreaterThan(0);
    limits.clear();
  });
});
