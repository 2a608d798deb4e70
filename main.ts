#!/usr/bin/env bun
// pgnet's entry point: parse the command line, build the parts, wire the signals.

import { join } from "node:path";
import { type CliOptions, parseCli, usage } from "./src/cli.ts";
import { resolveSettings } from "./src/config.ts";
import { installCommand, statusCommand, uninstallCommand, withSql } from "./src/commands.ts";
import { resolveTarget, type Target } from "./src/db.ts";
import { EmbeddedPostgres } from "./src/embedded.ts";
import { coerceError, errorCode, PgnetError } from "./src/errors.ts";
import { createLogger, type Logger } from "./src/log.ts";
import { serve } from "./src/runtime.ts";
import { EgressPolicy } from "./src/egress.ts";
import { createAgents } from "./src/http.ts";
import { createStatusApp } from "./src/status.ts";
import { PG_NET_API_VERSION, VERSION } from "./src/version.ts";
import { databaseLabels, Fleet, namesNoDatabase } from "./src/fleet.ts";

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

/** Where to connect: the databases given, or an embedded PostgreSQL started (and kept) in --data-dir. */
function openTargets(options: CliOptions, log: Logger): { targets: Target[]; close(): void } {
  const given = options.databases.length > 0
    ? options.databases.map((d) => resolveTarget(d, process.env)!)
    : [resolveTarget(undefined, process.env)].filter((t) => t !== undefined);
  if (given.length > 0) return { targets: given, close() {} };
  const pg = new EmbeddedPostgres({ dataDir: join(options.dataDir, "postgres"), port: options.embeddedPort });
  if (pg.initialise()) log.info("created an embedded PostgreSQL cluster", { dataDir: pg.dataDir });
  const started = !pg.running();
  if (started) pg.start();
  log.info("embedded PostgreSQL is up; connect with:", {
    psql: `PGPASSWORD=$(cat ${pg.passwordFile}) psql -h 127.0.0.1 -p ${pg.port} -U ${pg.user} postgres`,
  });
  return { targets: [{ url: pg.url() }], close: () => started && pg.stop("fast") };
}

/** Runs until a signal. `onForcedExit` cleans up before a second signal ends the process without unwinding. */
async function runCommand(
  targets: Target[],
  options: CliOptions,
  log: Logger,
  onForcedExit: () => void,
): Promise<number> {
  const { preset, allow, deny, allowInsecureRedirects } = options.egress;
  const fleet = new Fleet({
    logger: log,
    flags: options.settings,
    env: process.env,
    egress: new EgressPolicy({ preset, allow, deny }),
    allowInsecureRedirects,
    ...(options.ca ? { agents: createAgents({ ca: options.ca }) } : {}),
    ...(options.proxy ? { proxy: options.proxy } : {}),
    logFailures: options.logFailures,
  });
  try {
    if (options.allDatabases) {
      // serves what has schema net: installing is `pgnet install --database …`'s to do
      await fleet.discover(targets[0]!, options.discoveryIntervalMs);
    } else if (targets.length === 1 && namesNoDatabase(targets[0]!)) {
      await fleet.follow(targets[0]!, (target) => withSql(target, (sql) => installCommand(sql, options, log)));
    } else {
      const several = targets.length > 1;
      const labels = databaseLabels(targets);
      for (const [i, target] of targets.entries()) {
        try {
          await withSql(target, (sql) => installCommand(sql, options, log));
        } catch (error) {
          if (!several) throw error;
          // one database out of several: it alone waits (its worker keeps trying to connect)
          log.error("cannot install schema net in this database", { database: labels[i], error: coerceError(error) });
        }
        await fleet.add(target, labels[i]!, { retry: several });
      }
    }
  } catch (error) {
    await fleet.stop(0);
    throw error;
  }

  let server: Awaited<ReturnType<typeof serve>> | undefined;
  if (options.statusPort !== undefined) {
    const app = createStatusApp({
      databases: () => fleet.served(),
      reload: () => fleet.reload(),
      restart: () => fleet.restart(),
      window: fleet.window,
      registry: fleet.registry,
      ...(options.statusToken ? { token: options.statusToken } : {}),
      listener: options.statusHost,
    });
    try {
      server = await serve(app.fetch, { hostname: options.statusHost, port: options.statusPort });
    } catch (error) {
      await fleet.stop(0);
      throw error;
    }
    // requests may never reach pgnet's own status server
    fleet.useEgressPolicy(
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
      const inFlight = fleet.served().reduce((n, d) => n + (d.pending ? 0 : d.worker.status().inFlight), 0);
      log.info("stopping", { signal, inFlight });
      void (async () => {
        await fleet.stop();
        await server?.stop();
        resolve(0);
      })();
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
    process.on("SIGHUP", () => {
      fleet.reload().catch((error) => log.error("reload failed", { error: coerceError(error) }));
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

  const { targets, close } = openTargets(options, log);
  try {
    // also when start-up fails: an embedded PostgreSQL that pgnet started is stopped again
    if (options.command === "run") return await runCommand(targets, options, log, close);
    const labels = databaseLabels(targets);
    for (const [i, target] of targets.entries()) {
      const json = options.json || !process.stdout.isTTY;
      if (targets.length > 1 && options.command === "status" && !json) console.log(`== ${labels[i]}`);
      await withSql(target, async (sql) => {
        if (options.command === "install") await installCommand(sql, options, log);
        else if (options.command === "status") {
          await statusCommand(sql, { json });
        } else await uninstallCommand(sql, log);
      });
    }
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
