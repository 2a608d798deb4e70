// The bodies of pgnet's one-shot commands: install, uninstall and status. main.ts parses and wires.

import type { CliOptions } from "./cli.ts";
import { connect, describe, type Sql, type Target } from "./db.ts";
import { install, installedVersion, setPrivileges, setUnlogged, uninstall } from "./installer.ts";
import { type QueueDepth, readQueueDepth } from "./queue.ts";
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

/**
 * `pgnet status`: what the dashboard shows, read from the database: the queue, the last five minutes' outcomes,
 * the last failures, dead letters and the workers connected. JSON with --json or when not on a terminal.
 */
export async function statusCommand(sql: Sql, options: { json: boolean }): Promise<void> {
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
    // the created index: the last five minutes only
    const [recent] = await sql`
      select count(*) filter (where error_msg is null and status_code < 400)::int as succeeded,
             count(*) filter (where error_msg is null and status_code >= 400)::int as "httpErrors",
             count(*) filter (where timed_out)::int as "timedOut",
             count(*) filter (where error_msg is not null and not timed_out)::int as failed
        from net._http_response where created > now() - interval '5 minutes'
    `;
    const failures = await sql`
      select id::text, status_code as status, error_msg as error, created from net._http_response
       where created > now() - interval '5 minutes' and (error_msg is not null or status_code >= 400)
       order by created desc limit 10
    `;
    const deadLetters = version >= 6
      ? Number((await sql`select count(*)::int as n from net._http_dead_letter`)[0]!.n)
      : null;
    Object.assign(report, { queue, responses, lastFiveMinutes: recent, failures, deadLetters, workers });
  }
  console.log(options.json ? JSON.stringify(report, null, 2) : humanStatus(report));
}

/** The status report for a person at a terminal. */
function humanStatus(r: Record<string, unknown>): string {
  const lines = [`pgnet ${r.pgnet} — ${r.database}`];
  if (r.installedVersion === 0) return [...lines, "schema net is not installed (pgnet install)"].join("\n");
  const q = r.queue as QueueDepth;
  const recent = r.lastFiveMinutes as Record<string, number>;
  const workers = r.workers as { pid: number; client_addr: string | null; backend_start: Date }[];
  lines.push(
    `schema net version ${r.installedVersion}`,
    `queue:      ${q.readyTruncated ? "more than " : ""}${q.ready} ready, ${q.claimed} claimed, oldest ready ` +
      `${q.oldestReadySeconds.toFixed(1)} s`,
    `last 5 min: ${recent.succeeded} succeeded, ${recent.httpErrors} HTTP errors (400+), ${recent.timedOut} timed ` +
      `out, ${recent.failed} failed`,
    `responses:  about ${(r.responses as { estimated: string }).estimated} stored` +
      (r.deadLetters === null ? "" : `; ${r.deadLetters} dead letters`),
    `workers:    ${workers.length === 0 ? "none connected" : workers.length}`,
  );
  for (const w of workers) {
    lines.push(
      `  pid ${w.pid} from ${w.client_addr ?? "local socket"} since ${new Date(w.backend_start).toISOString()}`,
    );
  }
  const failures = r.failures as { id: string; status: number | null; error: string | null; created: Date }[];
  if (failures.length > 0) lines.push("last failures:");
  for (const f of failures) {
    lines.push(`  ${new Date(f.created).toISOString()}  #${f.id}  ${f.error ?? `HTTP ${f.status}`}`);
  }
  return lines.join("\n");
}

export async function uninstallCommand(sql: Sql, log: Logger): Promise<void> {
  if (await uninstall(sql)) log.info("dropped schema net");
  else log.info("schema net is not installed: nothing to drop");
}
