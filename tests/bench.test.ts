// The benchmark's quick mode, so the program keeps working (its figures are not asserted: timing goals live in
// the benchmark itself, not in tests).

import { expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { BEGIN, LAST_RUN, replaceTable, table } from "../bench/readme.ts";
import { ROOT } from "./helpers/binary.ts";

test("npm run bench -- --quick --json reports every scenario", () => {
  const run = spawnSync(process.execPath, ["bench/bench.ts", "--quick", "--json"], {
    cwd: ROOT,
    encoding: "utf8",
    timeout: 240_000,
  });
  expect(run.status).toBe(0);
  const report = JSON.parse(run.stdout) as Record<string, unknown>;
  const names = Object.keys(report);
  for (
    const scenario of [
      "throughput GET",
      "throughput POST",
      "latency p50",
      "latency p99",
      "head-of-line: last fast of 100, slow on another host",
      "head-of-line: last fast of 100, slow on the same host",
      "mixed: one slow host",
      "backlog",
      "target ceiling",
      "target ceiling, POST 1KB",
      "large:",
      "enqueue: http_get",
      "enqueue: http_post",
      "enqueue: pg_net 0.20's http_get",
      "latency p50 after 2.5 s idle",
      "latency of the first request pgnet serves",
      "after 2.5 s idle, without pgnet: one GET to the target, pgnet's HTTP client",
      "latency p50 with",
      "idle statements",
      "fairness: 100 in one database",
    ]
  ) {
    expect(names.some((n) => n.startsWith(scenario))).toBe(true);
  }
  for (const [name, value] of Object.entries(report)) {
    const figure = typeof value === "number" ? value : (value as { median: number }).median;
    // the rest of a request's time after idle is a difference of two clocks' readings, near zero either side
    if (name.includes("median rest")) expect({ name, finite: Number.isFinite(figure) }).toEqual({ name, finite: true });
    else expect({ name, positive: figure > 0 }).toEqual({ name, positive: true });
  }
}, 240_000);

test("README's benchmark table is the one bench/readme.ts makes from bench/last-run.json", () => {
  const { heading, results } = JSON.parse(readFileSync(LAST_RUN, "utf8"));
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  expect(readme).toContain(BEGIN);
  expect(replaceTable(readme, table(results, heading))).toBe(readme);
});

test("bench/readme.ts: a row per figure, with pg_net's figure and the goal where they are known", () => {
  const made = table({
    "enqueue: http_get, 100000 in one transaction (µs each)": { median: 20.5, min: 20.1, max: 25.9 },
    "idle statements per 5 s poll": 1,
    "a | new scenario (ms)": { median: 3, min: 3, max: 3 },
  }, "scenario");
  expect(made.split("\n")).toEqual([
    "| scenario | median | min – max | pg_net 0.20.4 | goal |",
    "| --- | --- | --- | --- | --- |",
    "| enqueue: http_get, 100000 in one transaction (µs each) | 20.5 | 20.1 – 25.9 | 11.5 | ≤ 15 |",
    "| idle statements per 5 s poll | 1 |  |  | ≤ 1 |",
    "| a \\| new scenario (ms) | 3 |  |  |  |",
  ]);
  expect(() => replaceTable("# no markers\n", made)).toThrow("no");
});
