// The benchmark: throughput, latency, head-of-line blocking, a large backlog, and the HTTP target's own ceiling.
// `npm run bench` (or `bun bench/bench.ts --help`). Starts an embedded PostgreSQL unless --database is given, the
// HTTP target in a process of its own, and pgnet as a separate process (so its peak RSS can be read).

import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { connect, type Sql } from "../src/db.ts";
import { EmbeddedPostgres, freePort } from "../src/embedded.ts";
import { EgressPolicy, guardedResolve } from "../src/egress.ts";
import { performRequest, systemResolve } from "../src/http.ts";
import { install, setUnlogged } from "../src/installer.ts";

const ROOT = resolve(dirname(new URL(import.meta.url).pathname), "..");
const BUN = process.execPath;

interface Stat {
  median: number;
  min: number;
  max: number;
}

function stat(values: number[]): Stat {
  const sorted = [...values].sort((a, b) => a - b);
  return { median: sorted[Math.floor((sorted.length - 1) / 2)]!, min: sorted[0]!, max: sorted[sorted.length - 1]! };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const median = (xs: readonly number[]) => percentile([...xs].sort((a, b) => a - b), 50);

const bodies = new Map<number, Uint8Array<ArrayBuffer>>();
/** A body of `n` bytes of text, made once per size. */
function large(n: number): Uint8Array<ArrayBuffer> {
  let body = bodies.get(n);
  if (!body) bodies.set(n, body = new TextEncoder().encode("0123456789abcdef".repeat(Math.ceil(n / 16)).slice(0, n)));
  return body;
}

/**
 * The HTTP target: GET/POST /fast answers at once, /slow/<ms> after a delay, /fail with a 503. Runs in its own
 * process, on 127.0.0.1; names under localhost reach it too, each a host of its own for pgnet's per-host limits.
 */
function runTarget(): void {
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      const path = new URL(request.url).pathname;
      if (request.body) await request.arrayBuffer();
      if (path.startsWith("/slow/")) await Bun.sleep(Number(path.slice(6)));
      if (path.startsWith("/bytes/")) return new Response(large(Number(path.slice(7))));
      if (path === "/fail") return new Response("unavailable", { status: 503 });
      return new Response("ok");
    },
  });
  console.log(`target ${server.port}`);
}

/** Starts `bun <args>` and resolves once its output matches `ready`. */
function startProcess(args: string[], ready: RegExp): Promise<{ child: ChildProcess; match: RegExpExecArray }> {
  const child = spawn(BUN, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  return new Promise((ok, fail) => {
    let out = "";
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const m = ready.exec(out);
      if (m) ok({ child, match: m });
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.on("exit", (code) => fail(new Error(`${args.join(" ")} exited ${code}: ${out}`)));
  });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.on("exit", r));
  child.kill("SIGTERM");
  await exited;
}

/** Peak resident memory of a process, in MB (VmHWM). */
function peakRssMb(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmHWM:"));
  return Number(line?.match(/\d+/)?.[0] ?? 0) / 1024;
}

interface Context {
  admin: Sql;
  url(database: string): string;
  target: string;
  counter: number;
  pgnetEnv: Record<string, string>;
  /** requests a pgnet serves, and round trips a process makes, before their samples: WARM_UP, less with --quick */
  warmUp: number;
  /** the embedded server's log, when the benchmark started the server */
  serverLog?: string;
}

function startPgnet(ctx: Context, url: string, extra: string[] = []): ChildProcess {
  const args = ["main.ts", "run", "--database", url, "--status-port", "off", "--log-level", "warn", ...extra];
  return spawn(BUN, args, { cwd: ROOT, env: { ...process.env, ...ctx.pgnetEnv }, stdio: "inherit" });
}

/** A fresh database with schema net installed. */
async function benchDatabase(ctx: Context) {
  const name = `bench_${process.pid}_${++ctx.counter}`;
  await ctx.admin.unsafe(`create database ${name}`);
  const url = ctx.url(name);
  const sql = connect({ url }, { max: 4 });
  await install(sql);
  return {
    name,
    url,
    sql,
    async drop() {
      await sql.end();
      await ctx.admin.unsafe(`drop database ${name} with (force)`);
    },
  };
}

/**
 * Reports stored responses as they are written: a statement trigger on net._http_response notifies their ids, and a
 * listener records when each arrived. The same in every scenario that waits for rows, so each pays the same for it.
 * `whenStored(id)` resolves with that time once the id's row is reported: waiting costs no CPU. The one-at-a-time
 * samples used to wait in a loop of `Bun.sleep(0)`, which keeps a core busy (450,000 turns a second, 1.02 s of CPU
 * a second, measured): on this 2-core machine PostgreSQL, pgnet and the target shared the other one.
 */
async function reportStored(sql: Sql, url: string) {
  await sql.unsafe(`
    create function public.bench_report() returns trigger language plpgsql as $$
    begin perform pg_notify('bench_done', (select string_agg(id::text, ',') from new_rows)); return null; end $$;
    create trigger bench_report after insert on net._http_response referencing new table as new_rows
      for each statement execute function public.bench_report();
  `);
  const stored = new Map<string, number>();
  const waiting = new Map<string, (at: number) => void>();
  let last = NaN;
  const listener = connect(
    { url },
    {
      max: 1,
      onnotify: (_: string, ids: string) => {
        last = performance.now();
        for (const id of ids.split(",")) {
          stored.set(id, last);
          waiting.get(id)?.(last);
          waiting.delete(id);
        }
      },
    } as Parameters<typeof connect>[1],
  );
  await listener`listen bench_done`;
  const whenStored = (id: string) =>
    stored.has(id) ? Promise.resolve(stored.get(id)!) : new Promise<number>((resolve) => waiting.set(id, resolve));
  return { stored, whenStored, lastStored: () => last, end: () => listener.end() };
}

/** A fresh database with schema net, the stored-row reporter, and a pgnet process. */
async function setup(
  ctx: Context,
  unlogged = false,
  prepare?: (sql: Sql) => Promise<unknown>,
  pgnetArgs: string[] = [],
) {
  const db = await benchDatabase(ctx);
  const { sql, url } = db;
  if (unlogged) await setUnlogged(sql);
  const { stored, whenStored, end } = await reportStored(sql, url);
  await prepare?.(sql);
  const pgnet = startPgnet(ctx, url, pgnetArgs);
  for (;;) {
    const [up] = await sql`select net._worker_is_up() as up`;
    if (up!.up) break;
    await Bun.sleep(20);
  }
  return {
    name: db.name,
    sql,
    stored,
    whenStored,
    pgnet,
    async teardown() {
      await stop(pgnet);
      await end();
      await db.drop();
    },
  };
}

async function waitStored(stored: Map<string, number>, count: number, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (stored.size < count) {
    if (performance.now() > deadline) {
      throw new Error(`only ${stored.size} of ${count} responses after ${timeoutMs} ms`);
    }
    await Bun.sleep(5);
  }
}

type Cost = "postgresCpuUs" | "walBytes" | "pgnetCpuUs";

/** The fields of /proc/<pid>/stat after "pid (comm) ": [0] is field 3 of proc(5), state; [1] the parent's pid. */
function procStat(pid: number | string): string[] {
  return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
}

/** CPU time of a process in µs (utime + stime, and with `children` those of its children it has waited for). */
function cpuUs(pid: number, children = false): number {
  const fields = procStat(pid);
  // utime is field 14, stime 15, cutime 16, cstime 17 (proc(5))
  const ticks = [11, 12, ...(children ? [13, 14] : [])].reduce((a, i) => a + Number(fields[i]), 0);
  return ticks * (1e6 / 100); // USER_HZ is 100 on Linux
}

/** Direct children of a process, from /proc. */
function childrenOf(pid: number): number[] {
  const found: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (Number(procStat(entry)[1]) === pid) found.push(Number(entry));
    } catch { /* ended meanwhile */ }
  }
  return found;
}

/**
 * Running totals for a run: the CPU time of every PostgreSQL server process (the postmaster, its live children,
 * and the children it has reaped), WAL bytes written since the cluster started, and pgnet's CPU time. CPU times
 * are read from /proc, so they are left out when the server is not on this machine (--database elsewhere).
 */
async function costs(run: Run): Promise<Partial<Record<Cost, number>>> {
  const [row] = await run.sql<{ pid: number; wal: string }[]>`
    select pg_backend_pid() as pid, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::text as wal`;
  const result: Partial<Record<Cost, number>> = { walBytes: Number(row!.wal) };
  try {
    const postmaster = Number(procStat(row!.pid)[1]);
    result.postgresCpuUs = cpuUs(postmaster, true) + childrenOf(postmaster).reduce((a, c) => a + cpuUs(c), 0);
    result.pgnetCpuUs = cpuUs(run.pgnet.pid!);
  } catch { /* not a local server */ }
  return result;
}

/** The 1 KB JSON body of the POST scenarios (the throughput, the enqueue and the ceiling). */
const POST_BODY = { data: "x".repeat(1000) };

/**
 * Requests/s from the commit of N requests until the last response row is stored, and the same counted from the
 * start of the statement that enqueued them (the enqueue is paid in the caller's transaction).
 */
async function throughput(
  ctx: Context,
  n: number,
  method: "GET" | "POST",
  unlogged: boolean,
): Promise<{ rate: number; withEnqueue: number } & Partial<Record<Cost, number>>> {
  const run = await setup(ctx, unlogged);
  try {
    const body = JSON.stringify(POST_BODY);
    const before = await costs(run);
    const started = performance.now();
    if (method === "GET") await run.sql`select net.http_get(${`${ctx.target}/fast`}) from generate_series(1, ${n})`;
    else {await run
        .sql`select net.http_post(${`${ctx.target}/fast`}, ${body}::text::jsonb) from generate_series(1, ${n})`;}
    const committed = performance.now();
    await waitStored(run.stored, n, 600_000);
    const last = Math.max(...run.stored.values());
    const after = await costs(run);
    const perRequest = Object.fromEntries(
      Object.entries(after).map(([k, v]) => [k, (v - before[k as Cost]!) / n]),
    ) as Partial<Record<Cost, number>>;
    return { rate: n / ((last - committed) / 1000), withEnqueue: n / ((last - started) / 1000), ...perRequest };
  } finally {
    await run.teardown();
  }
}

/**
 * pg_net 0.20's own enqueue, as far as it is SQL (pg_net-behavior.md API-04): its http_get body in PL/pgSQL over
 * its table (unlogged, six columns, no index), with the URL taken as it is (pg_net's parser is C) and pg_notify
 * for its C wake. What pg_net's design costs on this machine in this session, beside pgnet's own figure.
 */
const PG_NET_SHAPE = `
  create schema pgnet_bench_pg_net;
  create unlogged table pgnet_bench_pg_net.http_request_queue(
    id bigserial, method net.http_method not null, url text not null, headers jsonb, body bytea,
    timeout_milliseconds int not null);
  grant usage on schema pgnet_bench_pg_net to public;
  grant all on all tables in schema pgnet_bench_pg_net to public;
  grant all on all sequences in schema pgnet_bench_pg_net to public;
  create function pgnet_bench_pg_net.http_get(url text, params jsonb default '{}'::jsonb,
    headers jsonb default '{}'::jsonb, timeout_milliseconds int default 5000) returns bigint language plpgsql as $$
  declare
    params_array text[];
    request_id bigint;
  begin
    select coalesce(array_agg(net._urlencode_string(key) || '=' || net._urlencode_string(value)), '{}')
      into params_array from jsonb_each_text(params);
    insert into pgnet_bench_pg_net.http_request_queue(method, url, headers, timeout_milliseconds)
    values ('GET', url, headers, timeout_milliseconds)
    returning id into request_id;
    perform pg_notify('pgnet_bench_wake', '');
    return request_id;
  end $$;`;

/**
 * µs per enqueue: `n` calls in one transaction by an ordinary role (row-level security applies), the way a
 * trigger on a busy table pays for them. Nothing is sent (no worker runs).
 */
async function enqueueCost(
  ctx: Context,
  n: number,
  method: "GET" | "POST" | "pg_net's GET",
  unlogged = false,
): Promise<number> {
  const db = await benchDatabase(ctx);
  try {
    if (unlogged) await setUnlogged(db.sql);
    if (method === "pg_net's GET") await db.sql.unsafe(PG_NET_SHAPE);
    await db.sql.unsafe(
      `do $$ begin create role pgnet_bench_caller; exception when duplicate_object then null; end $$`,
    );
    await db.sql.unsafe(`grant pgnet_bench_caller to current_user`);
    const url = `${ctx.target}/fast`;
    return await db.sql.begin(async (tx) => {
      await tx`set local role pgnet_bench_caller`;
      const body = JSON.stringify(POST_BODY);
      const call = (count: number) =>
        method === "GET"
          ? tx`select count(net.http_get(${url})) from generate_series(1, ${count})`
          : method === "POST"
          ? tx`select count(net.http_post(${url}, ${body}::text::jsonb)) from generate_series(1, ${count})`
          : tx`select count(pgnet_bench_pg_net.http_get(${url})) from generate_series(1, ${count})`;
      await call(1000); // plans and caches warm
      const started = performance.now();
      await call(n);
      return ((performance.now() - started) * 1000) / n;
    });
  } finally {
    await db.drop();
  }
}

type Run = Awaited<ReturnType<typeof setup>>;

/**
 * `n` GETs one at a time (each `idleMs` after the last is stored): commit → stored in ms, sorted. `probe`, when
 * given, is read before each idle wait and after each sample, and told the two readings and the sample's time.
 */
async function oneAtATime<T>(
  ctx: Context,
  run: Run,
  n: number,
  idleMs = 0,
  probe?: { read(): Promise<T>; sample(before: T, after: T, ms: number): void },
): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const before = await probe?.read();
    if (idleMs > 0) await Bun.sleep(idleMs);
    const [row] = await run.sql`select net.http_get(${`${ctx.target}/fast`}) as id`;
    const committed = performance.now();
    times.push(await run.whenStored(String(row!.id)) - committed);
    if (probe) probe.sample(before!, await probe.read(), times.at(-1)!);
  }
  return times.sort((a, b) => a - b);
}

/** pgnet's own totals from /metrics: seconds in claim and store statements and in HTTP requests, and counts. */
async function pgnetTotals(port: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const sum = (pattern: RegExp) =>
    text.split("\n").filter((l) => pattern.test(l)).reduce((a, l) => a + Number(l.slice(l.lastIndexOf(" "))), 0);
  return {
    claimSeconds: sum(/^pgnet_statement_seconds_total\{kind="claim"/),
    claims: sum(/^pgnet_statements_total\{kind="claim"/),
    storeSeconds: sum(/^pgnet_statement_seconds_total\{kind="store"/),
    stores: sum(/^pgnet_statements_total\{kind="store"/),
    httpSeconds: sum(/^pgnet_request_duration_seconds_sum/),
    statements: sum(/^pgnet_statements_total\{/),
  };
}

/** setup() with pgnet's status server on a free port, once it answers: the run, and the port for pgnetTotals(). */
async function setupWithStatus(ctx: Context): Promise<{ run: Run; port: number }> {
  const port = await freePort();
  const run = await setup(ctx, false, undefined, ["--status-port", String(port)]);
  // the status server may start listening just after the worker reports itself up
  for (let tries = 0; await pgnetTotals(port).then(() => false, () => tries++ < 100);) await Bun.sleep(50);
  return { run, port };
}

/** Requests a pgnet serves before latency() samples it, and a process's round trips before roundTrips() times them. */
const WARM_UP = 10_000;

/**
 * Commit → stored, one request at a time, each committed `idleMs` after the last was stored (0: back to back), and
 * where it went, from pgnet's /metrics around each sample: the claim statement, the HTTP request, the store
 * statement, and the rest (the NOTIFY reaching pgnet, pgnet's own scheduling, the stored rows' NOTIFY reaching the
 * benchmark). Only samples with exactly one claim and one store (no poll claim in between) count in the split.
 * The first request pgnet serves is timed apart (`first`): it also pays for what a process and its connections do
 * once (a pooled connection preparing pgnet's statements, the first connection to the target, code run for the
 * first time), and was the slowest sample of every run (32 – 34 ms against 6 – 17). Then pgnet serves WARM_UP
 * requests (ctx.warmUp: fewer with --quick), as a pgnet that has served traffic has, before the samples: its code
 * is compiled by then. Without that, samples after idle measured a pgnet that had served 40 requests, whose HTTP
 * client alone took 2.4 ms (0.9 ms in a process that had sent 3,000 requests, 0.7 ms with fetch, idle as long).
 */
async function latency(ctx: Context, samples: number, idleMs = 0) {
  const { run, port } = await setupWithStatus(ctx);
  const split: Record<"claim" | "http" | "store" | "rest", number[]> = { claim: [], http: [], store: [], rest: [] };
  try {
    const [first] = await oneAtATime(ctx, run, 1, idleMs);
    await run.sql`select net.http_get(${`${ctx.target}/fast`}) from generate_series(1, ${ctx.warmUp})`;
    await waitStored(run.stored, ctx.warmUp + 1, 60_000);
    await oneAtATime(ctx, run, 200); // and the one-at-a-time path, back to back
    const times = await oneAtATime(ctx, run, samples, idleMs, {
      read: () => pgnetTotals(port),
      sample(before, after, ms) {
        const d = (k: string) => after[k]! - before[k]!;
        if (d("claims") !== 1 || d("stores") !== 1) return;
        const parts = {
          claim: d("claimSeconds") * 1000,
          http: d("httpSeconds") * 1000,
          store: d("storeSeconds") * 1000,
        };
        for (const [k, v] of Object.entries(parts)) split[k as keyof typeof parts].push(v);
        split.rest.push(ms - parts.claim - parts.http - parts.store);
      },
    });
    return {
      p50: percentile(times, 50),
      p95: percentile(times, 95),
      p99: percentile(times, 99),
      first: first!,
      split: Object.fromEntries(Object.entries(split).map(([k, xs]) => [k, xs.length ? median(xs) : Number.NaN])),
    };
  } finally {
    await run.teardown();
  }
}

const TRIPS = ["select", "fetch", "client"] as const;
type Trip = typeof TRIPS[number];

/**
 * The machine's own cost of a round trip without pgnet's worker, for comparison with the split above: medians of a
 * `select 1` on a pooled connection, of a GET to the target from this process with the runtime's fetch, and of
 * one with pgnet's HTTP client (src/http.ts, node:http), each on its keep-alive connection and run a few thousand
 * times first, each `idleMs` after the last (the three take turns), or back to back.
 */
async function roundTrips(ctx: Context, samples: number, idleMs: number): Promise<Record<Trip, number>> {
  const times: Record<Trip, number[]> = { select: [], fetch: [], client: [] };
  const request = { id: "1", method: "GET", url: `${ctx.target}/fast`, headers: {}, body: null, timeoutMs: 5000 };
  const trip: Record<Trip, () => Promise<unknown>> = {
    select: () => ctx.admin`select 1`,
    fetch: () => fetch(`${ctx.target}/fast`).then((r) => r.arrayBuffer()),
    client: () => performRequest(request, { maxResponseBytes: 1 << 20 }),
  };
  // every connection open, and each path run as often as pgnet's are before latency()'s samples (WARM_UP)
  for (let i = 0; i < ctx.warmUp; i++) await trip[TRIPS[i % TRIPS.length]!]();
  for (let i = 0; i < TRIPS.length * samples; i++) {
    const kind = TRIPS[i % TRIPS.length]!;
    if (idleMs > 0) await Bun.sleep(idleMs);
    const started = performance.now();
    await trip[kind]();
    times[kind].push(performance.now() - started);
  }
  return { select: median(times.select), fetch: median(times.fetch), client: median(times.client) };
}

/**
 * `count` times, `size` GETs committed together once the last were stored, answered at once or spread over
 * `spreadMs` (/slow/0 … /slow/spreadMs-1): the statements pgnet ran for them (all kinds, from its /metrics, read
 * 100 ms after the last was stored) and commit → last stored, medians.
 */
async function bursts(
  ctx: Context,
  count: number,
  size: number,
  spreadMs: number,
): Promise<{ statements: number; ms: number }> {
  const { run, port } = await setupWithStatus(ctx);
  const statements: number[] = [];
  const times: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      await Bun.sleep(100);
      const before = await pgnetTotals(port);
      const ids = (await run.sql`
        select net.http_get(case when ${spreadMs}::int = 0 then ${`${ctx.target}/fast`}
                                 else ${`${ctx.target}/slow/`} || (g % ${spreadMs}::int) end) as id
          from generate_series(1, ${size}) g
      `).map((r) => String(r.id));
      const committed = performance.now();
      times.push(Math.max(...await Promise.all(ids.map(run.whenStored))) - committed);
      await Bun.sleep(100);
      statements.push((await pgnetTotals(port)).statements! - before.statements!);
    }
    return { statements: median(statements), ms: median(times) };
  } finally {
    await run.teardown();
  }
}

/**
 * 1,000 slow (2 s) and 1,000 fast requests committed together, slow ones first: when is the last fast one stored?
 * With `sameHost` both go to one host, which may have only a quarter of the window (--host-concurrency): the fast
 * ones then wait their turn behind the slow ones, in order.
 */
async function headOfLine(ctx: Context, n: number, sameHost: boolean): Promise<number> {
  const run = await setup(ctx);
  const slow = sameHost ? ctx.target : ctx.target.replace("127.0.0.1", "slow.localhost");
  try {
    const ids = await run.sql.begin(async (tx) => {
      await tx`select net.http_get(${`${slow}/slow/2000`}) from generate_series(1, ${n})`;
      return (await tx`select net.http_get(${`${ctx.target}/fast`}) as id from generate_series(1, ${n})`).map((r) =>
        String(r.id)
      );
    });
    const committed = performance.now();
    await waitStored(run.stored, 2 * n, 60_000);
    return Math.max(...ids.map((id) => run.stored.get(id)!)) - committed;
  } finally {
    await run.teardown();
  }
}

/**
 * `n` requests spread over 10 hosts (h0…h9.localhost), committed together, each with a retry policy of 3
 * attempts. With `faults`, h0 answers after 2 s and h1 always fails with 503 (so each of its requests is sent three
 * times, 50–100 ms apart). Returns requests/s of the 8 healthy hosts: their count over the time to their last one.
 */
async function mixedHosts(ctx: Context, n: number, faults: boolean): Promise<number> {
  const run = await setup(ctx);
  const host = (i: number) => ctx.target.replace("127.0.0.1", `h${i}.localhost`);
  const path = (i: number) => (faults && i === 0 ? "/slow/2000" : faults && i === 1 ? "/fail" : "/fast");
  const policy = JSON.stringify({ max_attempts: 3, backoff_ms: 100 });
  try {
    const healthy = await run.sql.begin(async (tx) => {
      const ids: string[] = [];
      for (let i = 0; i < 10; i++) {
        const rows = await tx`
          select net.http_request(${`${host(i)}${path(i)}`}, retry => ${policy}::text::jsonb) as id
            from generate_series(1, ${n / 10})
        `;
        if (i >= 2) ids.push(...rows.map((r) => String(r.id)));
      }
      return ids;
    });
    const committed = performance.now();
    const deadline = performance.now() + 120_000;
    while (!healthy.every((id) => run.stored.has(id))) {
      if (performance.now() > deadline) throw new Error("the healthy hosts' responses did not all arrive in 120 s");
      await Bun.sleep(5);
    }
    const last = Math.max(...healthy.map((id) => run.stored.get(id)!));
    await waitStored(run.stored, n, 120_000);
    return healthy.length / ((last - committed) / 1000);
  } finally {
    await run.teardown();
  }
}

/** 1,000 responses of 1 MB committed together: requests/s until the last is stored, and pgnet's peak RSS. */
async function largeResponses(ctx: Context, n: number): Promise<{ rate: number; rssMb: number }> {
  const run = await setup(ctx);
  try {
    await run.sql`select net.http_get(${`${ctx.target}/bytes/1000000`}, timeout_milliseconds => 60000)
                    from generate_series(1, ${n})`;
    const committed = performance.now();
    let rss = 0;
    while (run.stored.size < n) {
      rss = Math.max(rss, peakRssMb(run.pgnet.pid!));
      await Bun.sleep(50);
    }
    const elapsed = Math.max(...run.stored.values()) - committed;
    return { rate: n / (elapsed / 1000), rssMb: Math.max(rss, peakRssMb(run.pgnet.pid!)) };
  } finally {
    await run.teardown();
  }
}

/**
 * One request at a time, commit → stored, with `n` requests waiting for a retry due a year from now: the claim
 * walks only the rows that are due, so the figure should match the plain latency scenario.
 */
async function futureQueue(ctx: Context, n: number, samples: number): Promise<{ p50: number; p99: number }> {
  const run = await setup(ctx, false, async (sql) => {
    // retries waiting out a year's backoff: they are in net._http_claim, not held (sql/0010)
    await sql`
      insert into net._http_claim (id, method, url, headers, timeout_milliseconds, enqueued_at, enqueued_by, not_before)
      select -i, 'GET', ${`${ctx.target}/fast`}, '{}', 5000, now(), current_user, now() + interval '1 year'
        from generate_series(1, ${n}) i
    `;
    await sql`vacuum analyze net._http_claim`;
  });
  try {
    const times = await oneAtATime(ctx, run, samples);
    return { p50: percentile(times, 50), p99: percentile(times, 99) };
  } finally {
    await run.teardown();
  }
}

/**
 * A backlog queued before pgnet starts, drained: requests/s from pgnet's start to the last row stored, and pgnet's
 * peak RSS. Stored rows are reported as in the throughput scenario; polling count(*) instead read the growing
 * response table four times a second, up to 1,000,000 rows a time, on the two cores pgnet and PostgreSQL share.
 */
async function backlog(ctx: Context, n: number): Promise<{ rate: number; rssMb: number }> {
  const db = await benchDatabase(ctx);
  const { sql, url } = db;
  const { stored, lastStored, end } = await reportStored(sql, url);
  try {
    await sql`
      insert into net.http_request_queue (method, url, headers, timeout_milliseconds)
      select 'GET', ${`${ctx.target}/fast`}, '{}', 5000 from generate_series(1, ${n})
    `;
    await sql`vacuum analyze net.http_request_queue`;
    // the million rows' pages are written out before the drain starts: a checkpoint during it is pgnet's own
    await sql`checkpoint`;
    const started = performance.now();
    const pgnet = startPgnet(ctx, url);
    let rss = 0;
    while (stored.size < n) {
      await Bun.sleep(250);
      rss = Math.max(rss, peakRssMb(pgnet.pid!));
    }
    const rate = n / ((lastStored() - started) / 1000);
    rss = Math.max(rss, peakRssMb(pgnet.pid!));
    await stop(pgnet);
    return { rate, rssMb: rss };
  } finally {
    await end();
    await db.drop();
  }
}

/**
 * Fairness between databases: one pgnet serves two; `n` requests are queued in the first, and once its drain is under
 * way 100 are committed in the second. The figure is how long those 100 take, commit to the last stored.
 */
async function fairness(ctx: Context, n: number): Promise<number> {
  const [busy, quiet] = [await benchDatabase(ctx), await benchDatabase(ctx)];
  try {
    await busy.sql`
      insert into net.http_request_queue (method, url, headers, timeout_milliseconds)
      select 'GET', ${`${ctx.target}/fast`}, '{}', 5000 from generate_series(1, ${n})
    `;
    const pgnet = spawn(
      BUN,
      [
        ...["main.ts", "run", "--database", busy.url, "--database", quiet.url],
        ...["--status-port", "off", "--log-level", "warn"],
      ],
      { cwd: ROOT, env: { ...process.env, ...ctx.pgnetEnv }, stdio: "inherit" },
    );
    try {
      const count = async (sql: Sql) => (await sql`select count(*)::int as n from net._http_response`)[0]!.n as number;
      while ((await count(busy.sql)) < Math.min(1000, n / 10)) await Bun.sleep(5);
      const started = performance.now();
      await quiet.sql`select net.http_get(${`${ctx.target}/fast`}) from generate_series(1, 100)`;
      while ((await count(quiet.sql)) < 100) await Bun.sleep(2);
      const took = performance.now() - started;
      if ((await count(busy.sql)) >= n) console.warn("fairness: the backlog was done before the 100; use a larger n");
      return took;
    } finally {
      await stop(pgnet);
    }
  } finally {
    await busy.drop();
    await quiet.drop();
  }
}

/** The egress policy the ceiling checks with: the default plus a deny list, with pgnet's own status port. */
const ceilingPolicy = () =>
  new EgressPolicy({ deny: ["10.0.0.0/8", "*.internal.example"], self: [{ host: "127.0.0.1", port: 8787 }] });

/**
 * The ceiling: pgnet's HTTP client alone (no database), with pgnet's default window; with `policy`, every request
 * goes through the egress policy's resolver, as in the worker. It runs in a process of its own, started for each
 * run as pgnet is: run in this one, after the other scenarios, it measured 11,586 req/s where a fresh process got
 * 16,265 from the same target (the target itself answers ten runs of 100,000 in a row at the same rate).
 */
async function ceiling(target: string, n: number, window: number, policy: boolean, method = "GET"): Promise<number> {
  const args = ["bench/bench.ts", "ceiling", target, String(n), String(window), policy ? "policy" : "none", method];
  const { child, match } = await startProcess(args, /^ceiling ([0-9.]+)\n/m);
  await stop(child);
  return Number(match[1]);
}

/**
 * The ceiling's own process: `bun bench/bench.ts ceiling <target> <n> <window> <policy|none> <GET|POST>`. A POST
 * sends what net.http_post sends for the throughput scenario's 1 KB body: jsonb's text of it, as JSON.
 */
async function runCeiling([target, n, window, policy, method]: string[]): Promise<void> {
  const options = {
    maxResponseBytes: 1 << 20,
    ...(policy === "policy" ? { resolve: guardedResolve(ceilingPolicy(), systemResolve) } : {}),
  };
  const post = method === "POST";
  const body = post ? new TextEncoder().encode(JSON.stringify(POST_BODY).replace(":", ": ")) : null;
  const headers = post ? { "Content-Type": "application/json" } : {};
  let next = 0;
  const total = Number(n);
  const started = performance.now();
  await Promise.all(Array.from({ length: Number(window) }, async () => {
    while (next < total) {
      const id = String(++next);
      await performRequest(
        { id, method: post ? "POST" : "GET", url: `${target}/fast`, headers, body, timeoutMs: 5000 },
        options,
      );
    }
  }));
  console.log(`ceiling ${total / ((performance.now() - started) / 1000)}`);
}

/**
 * Statements pgnet runs while idle, per poll interval: the server logs every statement of the benchmark's
 * database with its application_name, and only pgnet's sessions are counted (embedded PostgreSQL only).
 */
async function idleStatements(ctx: Context, seconds: number): Promise<number> {
  if (!ctx.serverLog) return NaN;
  const run = await setup(ctx);
  try {
    await run.sql.unsafe(`alter database ${run.name} set log_statement = 'all'`);
    await run.sql`select net.worker_restart()`; // new sessions pick up log_statement
    await Bun.sleep(2000);
    const offset = readFileSync(ctx.serverLog).length;
    await Bun.sleep(seconds * 1000);
    const lines = readFileSync(ctx.serverLog).subarray(offset).toString("utf8").split("\n");
    const statements = lines.filter((l) => / pgnet [^ ]+( worker)? LOG: {2}(statement|execute)/.test(l)).length;
    return statements / (seconds / 5); // the default poll interval is 5 s
  } finally {
    await run.teardown();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      database: { type: "string" },
      json: { type: "boolean" },
      quick: { type: "boolean" },
      runs: { type: "string" },
      only: { type: "string" },
      help: { type: "boolean" },
    },
  });
  if (values.help) {
    console.log(
      `Usage: npm run bench -- [--quick] [--runs N] [--only throughput,enqueue,latency,afteridle,burst,hol,mixed,large,future,backlog,fairness,ceiling,idle] [--json] [--database URL]
  --quick   small sizes, one run (a smoke test)
  --runs    repetitions of each scenario (default 3; medians with min and max)`,
    );
    return;
  }
  const quick = values.quick === true;
  const runs = Number(values.runs ?? (quick ? 1 : 3));
  const only = new Set(
    (values.only ?? "throughput,enqueue,latency,afteridle,burst,hol,mixed,large,future,backlog,fairness,ceiling,idle")
      .split(","),
  );
  const window = 2048; // pgnet's default --concurrency
  const pgnetEnv = {};

  const { child: targetProcess, match } = await startProcess(["bench/bench.ts", "target"], /target (\d+)/);
  const target = `http://127.0.0.1:${match[1]}`;
  let embedded: EmbeddedPostgres | undefined;
  let root: string | undefined;
  let base: URL;
  if (values.database) base = new URL(values.database);
  else {
    root = mkdtempSync(join(tmpdir(), "pgnet-bench-"));
    chmodSync(root, 0o755); // as root, the server runs as another account
    embedded = new EmbeddedPostgres({
      dataDir: join(root, "pg"),
      port: await freePort(),
      settings: {
        max_connections: "200",
        log_line_prefix: "'%m [%p] %a '",
      },
    });
    embedded.initialise();
    embedded.start();
    base = new URL(embedded.url());
  }
  const url = (database: string) => Object.assign(new URL(base), { pathname: `/${database}` }).toString();
  const admin = connect({ url: base.toString() }, { max: 1 });
  const ctx: Context = {
    admin,
    url,
    target,
    counter: 0,
    pgnetEnv,
    warmUp: quick ? 1000 : WARM_UP,
    ...(embedded ? { serverLog: join(embedded.dataDir, "server.log") } : {}),
  };
  const results: Record<string, unknown> = {};
  const report = (name: string, value: unknown) => {
    results[name] = value;
    if (!values.json) console.log(`${name.padEnd(42)} ${JSON.stringify(value)}`);
  };
  const repeat = async (fn: () => Promise<number>) => {
    const xs: number[] = [];
    for (let i = 0; i < runs; i++) xs.push(await fn());
    return stat(xs.map((x) => Math.round(x * 10) / 10));
  };

  try {
    const sizes = quick ? [2000] : [10_000, 100_000];
    const costNames: Record<Cost, string> = {
      postgresCpuUs: "PostgreSQL CPU per request, enqueue to stored (µs)",
      walBytes: "WAL per request (bytes)",
      pgnetCpuUs: "pgnet CPU per request (µs)",
    };
    const both = async (
      name: string,
      fn: () => ReturnType<typeof throughput>,
    ) => {
      const all = [];
      for (let i = 0; i < runs; i++) all.push(await fn());
      report(`${name} (req/s)`, stat(all.map((r) => Math.round(r.rate))));
      report(`${name}, enqueue included (req/s)`, stat(all.map((r) => Math.round(r.withEnqueue))));
      for (const [key, label] of Object.entries(costNames) as [Cost, string][]) {
        const xs = all.map((r) => r[key]).filter((x): x is number => x !== undefined);
        if (xs.length === all.length) report(`${name}: ${label}`, stat(xs.map((x) => Math.round(x * 10) / 10)));
      }
    };
    if (only.has("throughput")) {
      for (const n of sizes) {
        await both(`throughput GET ${n} durable`, () => throughput(ctx, n, "GET", false));
        await both(`throughput GET ${n} unlogged`, () => throughput(ctx, n, "GET", true));
        await both(`throughput POST 1KB ${n} durable`, () => throughput(ctx, n, "POST", false));
      }
    }
    if (only.has("enqueue")) {
      const n = quick ? 5000 : 100_000;
      report(`enqueue: http_get, ${n} in one transaction (µs each)`, await repeat(() => enqueueCost(ctx, n, "GET")));
      report(`enqueue: http_post 1KB (µs each)`, await repeat(() => enqueueCost(ctx, n, "POST")));
      // pg_net's tables are unlogged: the same, without the write-ahead log
      report(`enqueue: http_get, unlogged (µs each)`, await repeat(() => enqueueCost(ctx, n, "GET", true)));
      report(`enqueue: http_post 1KB, unlogged (µs each)`, await repeat(() => enqueueCost(ctx, n, "POST", true)));
      report(
        `enqueue: pg_net 0.20's http_get SQL and table, its C URL parser left out (µs each)`,
        await repeat(() => enqueueCost(ctx, n, "pg_net's GET")),
      );
    }
    // where a request spends its time, medians per sample: pgnet's statements and the HTTP request from its own
    // /metrics, the rest being the two NOTIFYs' way and pgnet's scheduling
    const latencies = async (name: string, label: string, samples: number, idleMs: number, ps: string[]) => {
      const figures: Record<string, number[]> = {};
      const add = (k: string, v: number) => (figures[k] ??= []).push(Math.round(v * 100) / 100);
      for (let i = 0; i < runs; i++) {
        const l = await latency(ctx, samples, idleMs);
        for (const p of ps) add(p, l[p as "p50" | "p95" | "p99"]);
        add("first", l.first);
        // a run whose samples all had a poll claim in between has no split
        for (const [k, v] of Object.entries(l.split)) if (Number.isFinite(v)) add(k, v);
      }
      for (const p of ps) report(`latency ${p} ${name} (ms)`, stat(figures[p]!));
      if (idleMs > 0) report(`latency of the first request pgnet serves, ${name} (ms)`, stat(figures.first!));
      for (const k of ["claim", "http", "store", "rest"]) {
        if (figures[k]) report(`${label}, median ${k} (ms)`, stat(figures[k]));
      }
    };
    const trips = async (label: string, samples: number, idleMs: number) => {
      const figures: Record<Trip, number[]> = { select: [], fetch: [], client: [] };
      for (let i = 0; i < runs; i++) {
        const t = await roundTrips(ctx, samples, idleMs);
        for (const kind of TRIPS) figures[kind].push(Math.round(t[kind] * 100) / 100);
      }
      report(`${label}, without pgnet: one select 1 (ms)`, stat(figures.select));
      report(`${label}, without pgnet: one GET to the target (ms)`, stat(figures.fetch));
      report(`${label}, without pgnet: one GET to the target, pgnet's HTTP client (ms)`, stat(figures.client));
    };
    if (only.has("afteridle")) {
      await latencies("after 2.5 s idle", "after 2.5 s idle", quick ? 2 : 40, 2500, ["p50", "p99"]);
      await trips("after 2.5 s idle", quick ? 1 : 10, 2500);
    }
    if (only.has("latency")) {
      await latencies("commit→stored", "back to back", quick ? 100 : 1000, 0, ["p50", "p95", "p99"]);
      await trips("back to back", quick ? 20 : 200, 0);
    }
    if (only.has("burst")) {
      for (const spreadMs of [0, 50]) {
        const figures = { statements: [] as number[], ms: [] as number[] };
        for (let i = 0; i < runs; i++) {
          const b = await bursts(ctx, quick ? 3 : 20, 100, spreadMs);
          figures.statements.push(b.statements);
          figures.ms.push(Math.round(b.ms * 100) / 100);
        }
        const how = spreadMs === 0 ? "answered at once" : `answers spread over ${spreadMs} ms`;
        report(`burst: pgnet statements for 100 requests committed together, ${how}`, stat(figures.statements));
        report(`burst: 100 requests committed together, ${how}, commit → last stored (ms)`, stat(figures.ms));
      }
    }
    if (only.has("hol")) {
      const n = quick ? 100 : 1000;
      report(
        `head-of-line: last fast of ${n}, slow on another host (ms)`,
        await repeat(() => headOfLine(ctx, n, false)),
      );
      report(
        `head-of-line: last fast of ${n}, slow on the same host (ms)`,
        await repeat(() => headOfLine(ctx, n, true)),
      );
    }
    if (only.has("mixed")) {
      const n = quick ? 1000 : 10_000;
      const healthy = await repeat(() => mixedHosts(ctx, n, false));
      const mixed = await repeat(() => mixedHosts(ctx, n, true));
      report(`mixed: ${n} over 10 healthy hosts, 8 hosts' rate (req/s)`, healthy);
      report(`mixed: one slow host, one failing (retried), 8 healthy hosts' rate (req/s)`, mixed);
      report("mixed: healthy hosts' rate against all healthy (%)", Math.round(100 * mixed.median / healthy.median));
    }
    if (only.has("backlog")) {
      const n = quick ? 5000 : 1_000_000;
      const drains = [];
      for (let i = 0; i < runs; i++) drains.push(await backlog(ctx, n));
      report(`backlog ${n} drain (req/s)`, stat(drains.map((b) => Math.round(b.rate))));
      report(`backlog ${n} pgnet peak RSS (MB)`, stat(drains.map((b) => Math.round(b.rssMb))));
    }
    if (only.has("fairness")) {
      const n = quick ? 10_000 : 100_000;
      report(
        `fairness: 100 in one database while ${n} drain in another, commit → last stored (ms)`,
        await repeat(() => fairness(ctx, n)),
      );
    }
    if (only.has("large")) {
      const runsOf = [];
      for (let i = 0; i < runs; i++) runsOf.push(await largeResponses(ctx, quick ? 100 : 1000));
      report(`large: ${quick ? 100 : 1000} × 1 MB responses (req/s)`, stat(runsOf.map((r) => Math.round(r.rate))));
      report("large: pgnet peak RSS (MB)", stat(runsOf.map((r) => Math.round(r.rssMb))));
    }
    if (only.has("future")) {
      const n = quick ? 10_000 : 1_000_000;
      const samples: Record<string, number[]> = { p50: [], p99: [] };
      for (let i = 0; i < runs; i++) {
        const l = await futureQueue(ctx, n, quick ? 50 : 300);
        for (const k of ["p50", "p99"] as const) samples[k]!.push(Math.round(l[k] * 100) / 100);
      }
      for (const k of ["p50", "p99"]) report(`latency ${k} with ${n} queued a year ahead (ms)`, stat(samples[k]!));
    }
    if (only.has("ceiling")) {
      const n = quick ? 5000 : 100_000;
      report(
        `target ceiling, pgnet's HTTP client, window ${window} (req/s)`,
        await repeat(() => ceiling(target, n, window, false)),
      );
      report(`target ceiling with the egress policy (req/s)`, await repeat(() => ceiling(target, n, window, true)));
      report(
        `target ceiling, POST 1KB, pgnet's HTTP client, window ${window} (req/s)`,
        await repeat(() => ceiling(target, n, window, false, "POST")),
      );
    }
    if (only.has("idle")) report("idle statements per 5 s poll", await idleStatements(ctx, quick ? 10 : 30));
  } finally {
    await admin.end();
    await stop(targetProcess);
    embedded?.stop("fast");
    if (root) rmSync(root, { recursive: true, force: true });
  }
  if (values.json) console.log(JSON.stringify(results, null, 2));
}

if (process.argv[2] === "target") runTarget();
else if (process.argv[2] === "ceiling") await runCeiling(process.argv.slice(3));
else await main();
