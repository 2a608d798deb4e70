// Writes README's benchmark table from `npm run bench -- --json` output, so the table is what runs printed:
//   npm run bench -- --json > /tmp/bench.json && bun bench/readme.ts /tmp/bench.json [more.json …]
// Several files (runs of some scenarios each, `--only`) are merged, a later file's figure winning. The results
// are kept in bench/last-run.json with the table's heading, and the table goes between the two marker lines in
// README.md's Performance section; tests/bench.test.ts checks that README's table is the one they make.
// Goals and pg_net's figures are keyed by the start of a scenario's name; a scenario with neither gets none.

import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";

const ROOT = resolve(dirname(new URL(import.meta.url).pathname), "..");
export const BEGIN = "<!-- bench table: written by bench/readme.ts from `npm run bench -- --json`; do not edit -->";
export const END = "<!-- end of bench table -->";

/** pg_net 0.20.4, measured on this machine side by side with pgnet (issue 17), and the goals the issues set. */
const NOTES: [prefix: string, pgNet: string, goal: string][] = [
  ["throughput GET 100000 durable (req/s)", "about 200 (1,000 with batch_size 1000)", "≥ 75 % of the ceiling"],
  ["throughput POST 1KB 100000 durable (req/s)", "", "within 10 % of GET"],
  ["enqueue: http_get, 100000", "11.5", "≤ 15"],
  ["enqueue: http_post 1KB (µs each)", "18.9", "≤ 20"],
  ["enqueue: http_get, unlogged", "11.5 (unlogged too)", ""],
  ["enqueue: http_post 1KB, unlogged", "18.9 (unlogged too)", ""],
  ["latency p50 commit→stored", "1,004", "≤ 5"],
  ["latency p99 commit→stored", "", "≤ 25"],
  ["latency p50 after 2.5 s idle", "3.4", "≤ 2"],
  ["latency p99 after 2.5 s idle", "", "≤ 8"],
  ["head-of-line: last fast of 1000, slow on another host", "", "≤ 200"],
  ["backlog 1000000 drain", "", "within 10 % of 100,000"],
  ["backlog 1000000 pgnet peak RSS", "", "< 250"],
  ["idle statements", "", "≤ 1"],
  ["burst: pgnet statements", "4", "≤ 8"],
];

type Figure = number | { median: number; min: number; max: number };

const number = (x: number) => x.toLocaleString("en-US", { maximumFractionDigits: 2 });

/** The Markdown table for a run's results. */
export function table(results: Record<string, Figure>, heading: string): string {
  const rows = Object.entries(results).map(([name, figure]) => {
    const [, pgNet, goal] = NOTES.find(([prefix]) => name.startsWith(prefix)) ?? ["", "", ""];
    const [median, range] = typeof figure === "number"
      ? [number(figure), ""]
      : [number(figure.median), figure.min === figure.max ? "" : `${number(figure.min)} – ${number(figure.max)}`];
    return `| ${name.replaceAll("|", "\\|")} | ${median} | ${range} | ${pgNet} | ${goal} |`;
  });
  return [`| ${heading} | median | min – max | pg_net 0.20.4 | goal |`, "| --- | --- | --- | --- | --- |", ...rows]
    .join("\n");
}

/** README with the part between the markers replaced by `block`; an error if the markers are missing. */
export function replaceTable(readme: string, block: string): string {
  const start = readme.indexOf(BEGIN);
  const end = readme.indexOf(END);
  if (start < 0 || end < start) throw new Error(`README.md has no "${BEGIN}" … "${END}" block to replace`);
  return `${readme.slice(0, start + BEGIN.length)}\n${block}\n${readme.slice(end)}`;
}

export const LAST_RUN = resolve(ROOT, "bench/last-run.json");

if (import.meta.main) {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: bun bench/readme.ts <results.json from npm run bench -- --json> [more.json …]");
    process.exit(2);
  }
  const results = Object.assign({}, ...files.map((f) => JSON.parse(readFileSync(f, "utf8")))) as Record<
    string,
    Figure
  >;
  const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
  const day = new Date().toLocaleDateString("en-GB", { day: "numeric", month: "long", year: "numeric" });
  const heading = `scenario (${day}, pgnet ${commit})`;
  writeFileSync(LAST_RUN, JSON.stringify({ heading, results }, null, 2) + "\n");
  const path = resolve(ROOT, "README.md");
  writeFileSync(path, replaceTable(readFileSync(path, "utf8"), table(results, heading)));
  console.log(`README.md: ${Object.keys(results).length} figures written`);
}
