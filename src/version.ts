// Version strings: pgnet's own, and the pg_net release whose SQL API it is a drop-in for.

export const VERSION = "0.1.0";
export const PG_NET_API_VERSION = "0.20.4";
/** Sent on every request unless the caller sets User-Agent, as pg_net does. */
export const USER_AGENT = `pg_net/${PG_NET_API_VERSION}`;
/** pool connections show this in pg_stat_activity */
export const APPLICATION_NAME = `pgnet ${VERSION}`;
/** the LISTEN connection shows this; net.check_worker_is_up() and net.wait_until_running() look for it */
export const WORKER_APPLICATION_NAME = `pgnet ${VERSION} worker`;
/** the role pgnet's statements run as (created by sql/0003_privileges.sql) */
export const WORKER_ROLE = "pgnet_worker";
