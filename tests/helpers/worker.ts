// Starting a worker against a test database, and waiting for what it writes.

import type { SettingValues } from "../../src/config.ts";
import type { Sql } from "../../src/db.ts";
import type { ResponseRow } from "../../src/queue.ts";
import { createLogger, type Logger } from "../../src/log.ts";
import { Worker } from "../../src/worker.ts";

/** A logger that keeps its lines, so tests can assert on them. */
export function memoryLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return Object.assign(createLogger({ level: "debug", format: "text", write: (line) => lines.push(line) }), { lines });
}

export async function startWorker(url: string, flags: SettingValues = {}, logger: Logger = memoryLogger()) {
  const worker = new Worker({ target: { url }, logger, flags: { "poll-interval": "200ms", ...flags } });
  await worker.start();
  return worker;
}

/** Polls `check` every 20 ms until it returns something truthy, or fails after `timeoutMs`. */
export async function waitFor<T>(
  check: () => Promise<T> | T,
  timeoutMs = 10_000,
  what = "condition",
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A row of net._http_response as a SELECT returns it. */
export interface StoredResponse extends ResponseRow {
  created: Date;
  /** how many attempts the outcome took */
  attempts: number;
}

/** Waits until the response row for `id` exists and returns it. */
export async function responseFor(sql: Sql, id: string | number, timeoutMs = 10_000): Promise<StoredResponse> {
  return await waitFor(
    async () => {
      const [row] = await sql<StoredResponse[]>`select * from net._http_response where id = ${id}`;
      return row;
    },
    timeoutMs,
    `the response to request ${id}`,
  );
}

/**
 * Requests with no response yet, of `ids` or all: queued, or taken by a worker (net._http_claim: in flight, given
 * back, or waiting for a retry). `held`: those a worker holds under a lease.
 */
export async function unanswered(sql: Sql, ids?: readonly (string | number)[]): Promise<{ n: number; held: number }> {
  const list = ids?.join(",") ?? null;
  const [row] = await sql<{ n: number; held: number }[]>`
    with wanted as (select string_to_array(${list}::text, ',')::bigint[] as ids)
    select (select count(*) from net.http_request_queue, wanted where ids is null or id = any(ids))::int
           + (select count(*) from net._http_claim, wanted where ids is null or id = any(ids))::int as n,
           (select count(*) from net._http_claim, wanted where (ids is null or id = any(ids)) and claimed_by is not null)::int
             as held
  `;
  return row!;
}

/** Deletes every request without a response, queued or claimed: a clean slate for the next test. */
export async function forgetRequests(sql: Sql): Promise<void> {
  await sql`delete from net.http_request_queue`;
  await sql`delete from net._http_claim`;
}
