// Every statement pgnet runs on the queue and response tables: claim (with expiry), store, renew, release.

import type { Sql } from "./db.ts";

/** A request claimed from net.http_request_queue: the one shape the worker and the HTTP layer share. */
export interface QueuedRequest {
  id: string;
  method: string;
  url: string;
  /** the row's headers jsonb as the driver parsed it: an object, or anything a direct insert put there */
  headers: unknown;
  body: Uint8Array | null;
  timeoutMs: number;
}

/** A row of net._http_response as the worker writes it (`created` is set by the database). */
export interface ResponseRow {
  id: string;
  status_code: number | null;
  content_type: string | null;
  headers: Record<string, string> | null;
  content: string | null;
  timed_out: boolean;
  error_msg: string | null;
}

interface ClaimedRow {
  expired: number;
  id: string | null;
  method: string;
  url: string;
  headers: unknown;
  body: Uint8Array | null;
  timeout_milliseconds: number;
}

export interface ClaimSettings {
  /** responses deleted at most per claim */
  batchSize: number;
  ttlSeconds: number;
  leaseMs: number;
}

/** Lists go to PostgreSQL as text (connect() turns fetch_types off): `string_to_array($1, ',')::bigint[]`. */
const idList = (ids: readonly string[]) => ids.join(",");

export class Queue {
  readonly #sql: Sql;
  readonly #workerId: string;

  constructor(sql: Sql, workerId: string) {
    this.#sql = sql;
    this.#workerId = workerId;
  }

  /** One statement: expire old responses (bounded), claim up to `limit` ready requests under a lease. */
  async claim(limit: number, settings: ClaimSettings): Promise<{ requests: QueuedRequest[]; expired: number }> {
    const { batchSize, ttlSeconds, leaseMs } = settings;
    const rows = await this.#sql<ClaimedRow[]>`
      with expired as (
        delete from net._http_response r
         using (select ctid from net._http_response
                 where created < now() - make_interval(secs => ${ttlSeconds}::float8)
                 order by created
                 limit ${batchSize}::int) old
         where r.ctid = old.ctid
        returning 1
      ), claimable as (
        select id from net.http_request_queue
         where (lease_until is null or lease_until < now())
           and (not_before is null or not_before <= now())
         order by id
         limit ${limit}::int
           for update skip locked
      ), claimed as (
        update net.http_request_queue q
           set claimed_by = ${this.#workerId}::text,
               lease_until = now() + make_interval(secs => ${leaseMs / 1000}::float8),
               attempts = q.attempts + 1
          from claimable c
         where q.id = c.id
        returning q.id, q.method, q.url, q.headers, q.body, q.timeout_milliseconds
      )
      select (select count(*) from expired)::int as expired, c.*
        from (select) one
        left join claimed c on true
    `;
    const requests = rows.filter((row) => row.id !== null).map((row) => ({
      id: row.id!,
      method: row.method,
      url: row.url,
      headers: row.headers,
      body: row.body,
      timeoutMs: row.timeout_milliseconds,
    }));
    return { requests, expired: rows[0]?.expired ?? 0 };
  }

  /** One statement stores the responses and removes their queue rows; a response already stored wins. */
  async store(results: readonly ResponseRow[]): Promise<void> {
    await this.#sql`
      with results as (
        select * from jsonb_to_recordset(${JSON.stringify(results)}::text::jsonb) as r(
          id bigint, status_code int, content_type text, headers jsonb, content text, timed_out bool, error_msg text)
      ), stored as (
        insert into net._http_response (id, status_code, content_type, headers, content, timed_out, error_msg)
        select id, status_code, content_type, headers, content, timed_out, error_msg from results
        on conflict (id) do nothing
      )
      delete from net.http_request_queue q using results r where q.id = r.id
    `;
  }

  /** Extends the lease of requests this worker holds, so long requests are not claimed twice. */
  async renew(ids: readonly string[], leaseMs: number): Promise<void> {
    await this.#sql`
      update net.http_request_queue
         set lease_until = now() + make_interval(secs => ${leaseMs / 1000}::float8)
       where id = any(string_to_array(${idList(ids)}::text, ',')::bigint[]) and claimed_by = ${this.#workerId}::text
    `;
  }

  /** Gives requests back to the queue at once (shutdown), rather than when their lease ends. */
  async release(ids: readonly string[]): Promise<void> {
    await this.#sql`
      update net.http_request_queue set claimed_by = null, lease_until = null
       where id = any(string_to_array(${idList(ids)}::text, ',')::bigint[]) and claimed_by = ${this.#workerId}::text
    `;
  }
}
