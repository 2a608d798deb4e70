#!/usr/bin/env bun
// pgnet's entry point: parse the command line, build the parts, wire the signals.

import { join } from "node:path";
import { type CliOptions, parseCli, usage } from "./src/cli.ts";
import { resolveSettings } from "./src/config.ts";
import { installCommand, statusCommand, uninstallCommand, withSql } from "./src/commands.ts";
import { connect, describe, resolveTarget, type Target } from "./src/db.ts";
import { EmbeddedPostgres } from "./src/embedded.ts";
import { coerceError, errorCode, PgnetError } from "./src/errors.ts";
import { createLogger, type Logger } from "./src/log.ts";
import { serve } from "./src/runtime.ts";
import { EgressPolicy } from "./src/egress.ts";
import { createAgents } from "./src/http.ts";
import { readQueueDepth } from "./src/queue.ts";
import { createStatusApp } from "./src/status.ts";
import { PG_NET_API_VERSION, VERSION } from "./src/version.ts";
import { Worker } from "./src/worker.ts";

/** a signal this soon after the first is the same one delivered twice, not an operator insisting */
const DUPLICATE_SIGNAL_MS = 500;
const USAGE_ERRORS = new Set(["INVALID_ARGUMENT", "INVALID_SETTING", "STATUS_TOKEN_REQUIRED", "CONFIRMATION_REQUIRED"]);
// network failures, and PostgreSQL's invalid_password, invalid_authorization_specification, invalid_catalog_name
const CONNECT_ERRORS = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "CONNECT_TIMEOUT",
  "28P01",
  "28000",
  "3D000",
]);

/** Where to connect: the database given, or an embedded PostgreSQL started (and kept) in --data-dir. */
function openTarget(options: CliOptions, log: Logger): { target: Target; close(): void } {
  const given = resolveTarget(options.database, process.env);
  if (given) return { target: given, close() {} };
  const pg = new EmbeddedPostgres({ dataDir: join(options.dataDir, "postgres"), port: options.embeddedPort });
  if (pg.initialise()) log.info("created an embedded PostgreSQL cluster", { dataDir: pg.dataDir });
  const started = !pg.running();
  if (started) pg.start();
  log.info("embedded PostgreSQL is up; connect with:", {
    psql: `PGPASSWORD=$(cat ${pg.passwordFile}) psql -h 127.0.0.1 -p ${pg.port} -U ${pg.user} postgres`,
  });
  return { target: { url: pg.url() }, close: () => started && pg.stop("fast") };
}

/** Runs until a signal. `onForcedExit` cleans up before a second signal ends the process without unwinding. */
async function runCommand(target: Target, options: CliOptions, log: Logger, onForcedExit: () => void): Promise<number> {
  await withSql(target, (sql) => installCommand(sql, options, log));
  const { preset, allow, deny, allowInsecureRedirects } = options.egress;
  const worker = new Worker({
    target,
    logger: log,
    flags: options.settings,
    env: process.env,
    egress: new EgressPolicy({ preset, allow, deny }),
    allowInsecureRedirects,
    ...(options.ca ? { agents: createAgents({ ca: options.ca }) } : {}),
    ...(options.proxy ? { proxy: options.proxy } : {}),
    logFailures: options.logFailures,
  });
  await worker.start();

  const monitor = connect(target, {
    max: 1,
    idle_timeout: 30,
    connect_timeout: 5,
    connection: { search_path: "pg_catalog, pg_temp" },
  });
  let server: Awaited<ReturnType<typeof serve>> | undefined;
  if (options.statusPort !== undefined) {
    const app = createStatusApp({
      worker,
      metrics: worker.metrics,
      database: describe(monitor),
      ...(options.statusToken ? { token: options.statusToken } : {}),
      listener: options.statusHost,
      queueDepth: () => readQueueDepth(monitor),
    });
    server = await serve(app.fetch, { hostname: options.statusHost, port: options.statusPort });
    // requests may never reach pgnet's own status server
    worker.useEgressPolicy(
      new EgressPolicy({ preset, allow, deny, self: [{ host: options.statusHost, port: server.port }] }),
    );
    const host = options.statusHost.includes(":") ? `[${options.statusHost}]` : options.statusHost;
    log.info("status server listening", { url: `http://${host}:${server.port}/` });
  }

  return await new Promise<number>((resolve) => {
    let stoppingSince = 0;
    const stop = (signal: string) => {
      if (stoppingSince) {
        // one Ctrl-C often arrives twice: the terminal signals the whole process group and npm forwards it too
        if (Date.now() - stoppingSince < DUPLICATE_SIGNAL_MS) return;
        log.warn("second signal: exiting now", { signal });
        onForcedExit();
        process.exit(1);
      }
      stoppingSince = Date.now();
      log.info("stopping", { signal, inFlight: worker.status().inFlight });
      void (async () => {
        await worker.stop();
        await server?.stop();
        await monitor.end({ timeout: 2 }).catch(() => {});
        resolve(0);
      })();
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
    process.on("SIGHUP", () => {
      worker.reload().catch((error) => log.error("reload failed", { error: coerceError(error) }));
    });
  });
}

async function main(options: CliOptions, log: Logger): Promise<number> {
  if (options.command === "help") {
    process.stdout.write(usage());
    return 0;
  }
  if (options.command === "version") {
    console.log(`pgnet ${VERSION} (pg_net ${PG_NET_API_VERSION} SQL API)`);
    return 0;
  }
  if (options.command === "uninstall" && !options.yes) {
    throw new PgnetError(
      "CONFIRMATION_REQUIRED",
      "uninstall drops schema net with every queued request and stored response: run it again with --yes",
    );
  }
  // bad PGNET_* values stop us here, before anything connects
  resolveSettings({ flags: options.settings, env: process.env });

  const { target, close } = openTarget(options, log);
  try {
    // also when start-up fails: an embedded PostgreSQL that pgnet started is stopped again
    if (options.command === "run") return await runCommand(target, options, log, close);
    await withSql(target, async (sql) => {
      if (options.command === "install") await installCommand(sql, options, log);
      else if (options.command === "status") await statusCommand(sql, { json: options.json || !process.stdout.isTTY });
      else await uninstallCommand(sql, log);
    });
    return 0;
  } finally {
    close();
  }
}

let options: CliOptions;
try {
  options = parseCli(process.argv.slice(2), process.env);
} catch (error) {
  console.error(`pgnet: ${coerceError(error).message}`);
  process.exit(2);
}
const log = createLogger({ level: options.logLevel, format: options.logFormat });
main(options, log).then(
  (code) => process.exit(code),
  (error) => {
    const e = coerceError(error);
    const code = error instanceof PgnetError ? error.code : undefined;
    if (code && USAGE_ERRORS.has(code)) {
      console.error(`pgnet: ${e.message}`);
      process.exit(2);
    }
    const cause = code ?? errorCode(error);
    const message = cause && CONNECT_ERRORS.has(cause) ? `Cannot connect to the database: ${e.message}` : e.message;
    log.error(message, { code: cause });
    process.exit(1);
  },
);
