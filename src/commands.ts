// The bodies of pgnet's one-shot commands: install, uninstall and status. main.ts parses and wires.

import type { CliOptions } from "./cli.ts";
import { connect, describe, type Sql, type Target } from "./db.ts";
import { install, installedVersion, setPrivileges, setUnlogged, uninstall } from "./installer.ts";
import { readQueueDepth } from "./queue.ts";
import type { Logger } from "./log.ts";
import { VERSION } from "./version.ts";

export async function withSql<T>(target: Target, fn: (sql: Sql) => Promise<T>): Promise<T> {
  // pinned: what pgnet runs resolves to pg_catalog and schema net, whatever the database's search_path says
  const sql = connect(target, { max: 2, connect_timeout: 10, connection: { search_path: "pg_catalog, pg_temp" } });
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 2 });
  }
}

export async function installCommand(sql: Sql, options: CliOptions, log: Logger): Promise<void> {
  const result = await install(sql);
  if (result.applied.length > 0) log.info("installed schema net", { version: result.version, applied: result.applied });
  else log.info("schema net is up to date", { version: result.version });
  if (options.privileges) {
    await setPrivileges(sql, options.privileges);
    if (options.privileges === "pg_net") {
      log.warn(
        "pg_net's privileges: every role can now read every queued request's headers and every response, change " +
          "or delete any request, and forge responses; pgnet install --privileges pgnet undoes it",
      );
    } else log.info("pgnet's privileges: each role sees and touches only its own requests and responses");
  }
  if (options.unlogged) {
    await setUnlogged(sql);
    log.info("queue and response tables are unlogged: faster, and emptied by a PostgreSQL crash");
  }
}

export async function statusCommand(sql: Sql): Promise<void> {
  const version = await installedVersion(sql);
  const report: Record<string, unknown> = { pgnet: VERSION, database: describe(sql), installedVersion: version };
  if (version > 0) {
    const queue = await readQueueDepth(sql);
    // the planner's estimate: counting hours of responses row by row could take minutes
    const [responses] = await sql`
      select greatest(reltuples, 0)::bigint::text as estimated from pg_class where oid = 'net._http_response'::regclass
    `;
    const workers = await sql`
      select pid, application_name, client_addr::text, backend_start from pg_stat_activity
       where datname = current_database() and application_name like 'pgnet % worker'
    `;
    Object.assign(report, { queue, responses, workers });
  }
  console.log(JSON.stringify(report, null, 2));
}

export async function uninstallCommand(sql: Sql, log: Logger): Promise<void> {
  if (await uninstall(sql)) log.info("dropped schema net");
  else log.info("schema net is not installed: nothing to drop");
}
