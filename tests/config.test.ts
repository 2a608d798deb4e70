// Settings: parsing, ranges, and precedence (flag > environment > database > default).

import { expect, test } from "bun:test";
import { parseDuration, resolveSettings } from "../src/config.ts";

test("durations take units and mixed parts; a bare number is in the setting's own unit", () => {
  expect(parseDuration("500ms", "ms")).toBe(500);
  expect(parseDuration("30s", "ms")).toBe(30_000);
  expect(parseDuration("6 hours", "s")).toBe(21_600_000);
  expect(parseDuration("1h 30min", "ms")).toBe(5_400_000);
  expect(parseDuration("1.5s", "ms")).toBe(1500);
  expect(parseDuration("250", "ms")).toBe(250);
  expect(parseDuration("3600", "s")).toBe(3_600_000);
  for (const bad of ["", "soon", "5 parsecs", "1h soon", "-5s"]) {
    expect(() => parseDuration(bad, "ms")).toThrow('expected a duration such as "500ms"');
  }
});

test("defaults apply when nothing is set", () => {
  const { settings, sources } = resolveSettings({});
  expect(settings).toEqual({
    batchSize: 200,
    ttlSeconds: 21600,
    concurrency: 2048,
    pollIntervalMs: 5000,
    leaseMs: 60000,
    shutdownTimeoutMs: 30000,
    maxResponseBytes: 64 * 1024 * 1024,
    maxRequestBytes: 64 * 1024 * 1024,
    memoryBudgetBytes: 256 * 1024 * 1024,
    maxWriteBytes: 4 * 1024 * 1024,
    writeDelayMs: 10,
    maxAttempts: 5,
    lockTimeoutMs: 5000,
    statementTimeoutMs: 60000,
    retryPolicy: null,
    deadLetterTtlSeconds: 7 * 86400,
    hostConcurrency: 512, // a quarter of the window
    hostRules: [],
    role: "pgnet_worker",
  });
  expect(new Set(Object.values(sources))).toEqual(new Set(["default"]));
});

test("a flag beats the environment, which beats the database", () => {
  const database = { "pg_net.batch_size": "10", "pg_net.ttl": "60s" };
  const env = { PGNET_BATCH_SIZE: "20", PGNET_CONCURRENCY: "7" };
  const { settings, sources } = resolveSettings({ flags: { "batch-size": "30" }, env, database });
  expect([settings.batchSize, sources.batchSize]).toEqual([30, "flag"]);
  expect([settings.concurrency, sources.concurrency]).toEqual([7, "env"]);
  expect([settings.ttlSeconds, sources.ttlSeconds]).toEqual([60, "database"]);
  const noFlag = resolveSettings({ env, database });
  expect([noFlag.settings.batchSize, noFlag.sources.batchSize]).toEqual([20, "env"]);
});

test("a bad flag or environment value throws a message naming it, the value and the range", () => {
  expect(() => resolveSettings({ flags: { "batch-size": "40000" } })).toThrow(
    'Invalid --batch-size: expected an integer from 1 to 32767, got "40000"',
  );
  expect(() => resolveSettings({ env: { PGNET_MAX_RESPONSE_SIZE: "lots" } })).toThrow(
    'Invalid PGNET_MAX_RESPONSE_SIZE: expected a size from 1 byte to 1GB, such as "64MiB", got "lots"',
  );
});

test("a bad database value is reported and replaced by the default; NULL and '' mean unset", () => {
  const reported: string[] = [];
  const { settings, sources } = resolveSettings({
    database: { "pg_net.batch_size": "0", "pg_net.ttl": "" },
    onInvalidDatabaseValue: (name, value, reason, fallback) =>
      reported.push(`${name}=${value}: ${reason}; ${fallback}`),
  });
  expect(settings.batchSize).toBe(200);
  expect(sources.batchSize).toBe("default");
  expect(sources.ttlSeconds).toBe("default");
  expect(reported).toEqual(["pg_net.batch_size=0: expected an integer from 1 to 32767; 200"]);
});

test("sizes take units", () => {
  expect(resolveSettings({ flags: { "max-response-size": "10MiB" } }).settings.maxResponseBytes).toBe(10 * 1048576);
  expect(resolveSettings({ flags: { "max-response-size": "5kb" } }).settings.maxResponseBytes).toBe(5000);
});
