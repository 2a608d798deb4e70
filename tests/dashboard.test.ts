// The dashboard page in a real browser (Debian's chromium, driven by playwright-core) against a real pgnet and
// PostgreSQL: the figures it shows follow the requests pgnet sends. Screenshots go to tests/artifacts/.

import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { cleanEnv, PgnetProcess, ROOT } from "./helpers/binary.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { Fixture } from "./helpers/fixture.ts";
import { waitFor } from "./helpers/worker.ts";

const ARTIFACTS = join(ROOT, "tests/artifacts");
const CHROMIUM = process.env.PGNET_CHROMIUM ?? "/usr/bin/chromium";

let db: TestDatabase;
let fixture: Fixture;
let browser: Browser;
beforeAll(async () => {
  db = await createDatabase();
  fixture = await Fixture.start();
  try {
    // --no-sandbox: the tests run as root, where chromium's sandbox refuses to start
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
  } catch (error) {
    throw new Error(`Cannot start chromium at "${CHROMIUM}": run tests/setup-browser.sh (or set PGNET_CHROMIUM)`, {
      cause: error,
    });
  }
  mkdirSync(ARTIFACTS, { recursive: true });
});
afterAll(async () => {
  await browser?.close();
  await fixture?.stop();
  await db?.drop();
});

const start = (extra: string[] = []) =>
  new PgnetProcess(["--database", db.url, "--status-port", "0", "--poll-interval", "200ms", ...extra], {
    env: cleanEnv(),
  });

const text = async (page: Page, id: string) => (await page.getByTestId(id).textContent()) ?? "";

/** Waits until the element with data-testid `id` reads `expected`; fails showing what it read last. */
async function shows(page: Page, id: string, expected: string | RegExp, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const seen = await text(page, id);
    if (typeof expected === "string" ? seen === expected : expected.test(seen)) return;
    if (Date.now() > deadline) {
      expect({ id, seen }).toEqual({
        id,
        seen: typeof expected === "string" ? expected : expect.stringMatching(expected),
      });
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const enqueue = async (url: string, count: number, timeoutMs = 5000, headers: Record<string, string> = {}) =>
  (await db.sql<{ id: string }[]>`
    select net.http_get(${url}, headers => ${db.sql.json(headers)}, timeout_milliseconds => ${timeoutMs}) as id
    from generate_series(1, ${count})`).map((row) => row.id);

test("the dashboard shows the worker's figures, follows the requests it sends, and says when pgnet is gone", async () => {
  const pgnet = start();
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const loaded: string[] = [];
  page.on("request", (request) => loaded.push(request.url()));
  const problems: string[] = [];
  page.on("pageerror", (error) => problems.push(error.message));
  page.on("console", (message) => message.type() === "error" && problems.push(message.text()));
  try {
    const url = await pgnet.statusUrl();
    await page.goto(`${url}/`);
    await shows(page, "connection", /^live/);
    await shows(page, "worker-state", "running");
    await shows(page, "worker-connected", "connected");
    for (const id of ["succeeded", "failed", "timed-out", "claimed", "in-flight", "queue-ready", "window-errors"]) {
      await shows(page, id, "0");
    }
    expect(await page.getByTestId("failure").count()).toBe(0);
    expect(await page.locator("[data-testid=chart] canvas").count()).toBe(1);

    await enqueue(fixture.url("/echo"), 5);
    // the header's value must never reach the page: the dashboard's data holds no headers or bodies
    const unavailable = await enqueue(fixture.url("/status/503"), 2, 5000, { "X-Secret": "hunter2" });
    // /never answers nothing: the request is in flight (and its row claimed) until its 5 s timeout
    const [timedOut] = await enqueue(fixture.url("/never"), 1, 5000);
    await shows(page, "in-flight", "1");
    await shows(page, "queue-claimed", "1");
    await waitFor(
      async () => (await db.sql`select count(*)::int as n from net._http_response`)[0]!.n === 8,
      10_000,
      "the 8 responses",
    );

    // pg_net stores a 503 as a response (status, no error): a success to the counters, an error to the activity
    await shows(page, "succeeded", "7");
    await shows(page, "timed-out", "1");
    await shows(page, "failed", "0");
    await shows(page, "claimed", "8");
    await shows(page, "in-flight", "0");
    await shows(page, "window-ok", "5");
    await shows(page, "window-errors", "3");
    await shows(page, "error-rate", "37.5 % errors");

    const failures = page.getByTestId("failure");
    await waitFor(async () => (await failures.count()) === 3, 10_000, "three failures listed");
    const rows = await failures.allTextContents();
    // newest first: the timeout ends last
    expect(rows[0]).toContain(`#${timedOut} GET`);
    expect(rows[0]).toContain("127.0.0.1");
    expect(rows[0]).toContain("Timeout of 5000 ms reached");
    for (const id of unavailable) {
      expect(rows.filter((row) => row.includes(`#${id} GET`) && row.includes("HTTP 503"))).toHaveLength(1);
    }
    const hosts = page.getByTestId("host");
    expect(await hosts.count()).toBe(1);
    const [host, requests, errors, meanMs, maxMs] = await hosts.locator("td").allTextContents();
    expect({ host, requests, errors }).toEqual({ host: "127.0.0.1", requests: "8", errors: "3" });
    // the slowest of them waited for its 5 s timeout
    const milliseconds = (figure = "") => Number(figure.replaceAll(",", ""));
    expect(milliseconds(maxMs)).toBeGreaterThanOrEqual(4900); // timers may fire a little early, never much
    expect(milliseconds(meanMs)).toBeGreaterThanOrEqual(4900 / 8);
    expect(await page.textContent("body")).not.toContain("hunter2");

    await page.screenshot({ path: join(ARTIFACTS, "dashboard-1280x800.png") });
    await page.setViewportSize({ width: 390, height: 844 });
    // a phone's single column: nothing wider than the screen
    await waitFor(
      () => page.evaluate(() => document.documentElement.scrollWidth <= 390),
      5000,
      "the page to fit 390 px",
    );
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-390x844.png") });
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-390x844-full.png"), fullPage: true });

    // everything the page loaded came from pgnet itself, without an error
    expect(loaded.filter((address) => !address.startsWith(`${url}/`))).toEqual([]);
    expect(loaded).toContain(`${url}/assets/uplot.js`);
    expect(problems).toEqual([]);

    expect(await pgnet.stop()).toBe(0);
    await shows(page, "connection", /^disconnected/);
    await shows(page, "notice", "Disconnected: pgnet is not answering. Retrying every second.");
    await shows(page, "worker-state", "unknown");
    expect(await text(page, "succeeded")).toBe("7"); // the last figures stay, dimmed
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-disconnected-390x844.png") });
  } finally {
    await page.close();
    await pgnet.stop();
  }
});

test("a pgnet with a status token asks for it, and shows its figures once the address carries it", async () => {
  const pgnet = start(["--status-token", "s3cret/+="]);
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  try {
    const url = await pgnet.statusUrl();
    await page.goto(`${url}/`);
    await shows(page, "connection", "status token needed");
    await shows(page, "notice", "This pgnet needs its status token: open /#token=… (the value of --status-token).");
    expect(await text(page, "succeeded")).toBe("—");
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-token-1280x800.png") });

    await page.goto(`${url}/#token=wrong`);
    await shows(
      page,
      "notice",
      "The status token in this address is not the one pgnet was started with (--status-token).",
    );

    await page.goto(`${url}/#token=${encodeURIComponent("s3cret/+=")}`);
    await shows(page, "connection", /^live/);
    await shows(page, "worker-state", "running");
    await shows(page, "succeeded", "0");
    await shows(page, "notice", "");
  } finally {
    await page.close();
    await pgnet.stop();
  }
});

test("serving two databases, the dashboard lists each with its own figures, and the totals add them up", async () => {
  const second = await createDatabase();
  const pgnet = start(["--database", second.url]);
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  try {
    const url = await pgnet.statusUrl();
    await page.goto(`${url}/`);
    await shows(page, "connection", /^live/);
    const before = Number((await text(page, "succeeded")).replaceAll(",", ""));
    await enqueue(fixture.url("/echo"), 2);
    await second.sql`select net.http_get(${fixture.url("/echo")}) from generate_series(1, 3)`;
    await shows(page, "succeeded", String(before + 5));
    await shows(page, "database", "2 databases");
    const rows = page.getByTestId("database-row");
    await waitFor(async () => (await rows.count()) === 2, 10_000, "two database rows");
    const cells = async (i: number) => await rows.nth(i).locator("td").allTextContents();
    await waitFor(async () => (await cells(1))[6] === "3", 10_000, "the second database's succeeded");
    const [first, other] = [await cells(0), await cells(1)];
    expect([first[0], first[1], other[0], other[1], other[6]]).toEqual([
      db.name,
      "running",
      second.name,
      "running",
      "3",
    ]);
    expect(Number(first[6])).toBe(before + 2);
    // both databases call the same host: one row for it, with every request
    const hosts = page.getByTestId("host");
    await waitFor(async () => (await hosts.count()) === 1, 10_000, "one host row");
    expect((await hosts.locator("td").allTextContents())[0]).toBe("127.0.0.1");
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-two-databases-1280x800.png") });
  } finally {
    await page.close();
    await pgnet.stop();
    await second.drop();
  }
});
