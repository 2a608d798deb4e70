// A real PostgreSQL extension named pg_net, made for a test from a script of our own (pg_net's objects, or just its
// schema), so that refusing and leaving the extension are tested against CREATE/DROP EXTENSION for real.

import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "bun:test";
import type { Sql } from "../../src/db.ts";

/** pg_net 0.20.4's schema, tables and types (../shared/pg_net-behavior.md §1.1), without its C functions. */
export const PG_NET_OBJECTS = `
create schema if not exists net;
create domain net.http_method as text check (value ilike 'get' or value ilike 'post' or value ilike 'delete');
create unlogged table net.http_request_queue(
  id bigserial, method net.http_method not null, url text not null, headers jsonb, body bytea,
  timeout_milliseconds int not null);
create unlogged table net._http_response(
  id bigint, status_code integer, content_type text, headers jsonb, content text, timed_out bool, error_msg text,
  created timestamptz not null default now());
create index on net._http_response (created);
create type net.request_status as enum ('PENDING', 'SUCCESS', 'ERROR');
create type net.http_response AS (status_code integer, headers jsonb, body text);
create type net.http_response_result as (status net.request_status, message text, response net.http_response);
`;

export interface FakePgNet {
  /** CREATE EXTENSION pg_net in the database `sql` connects to */
  create(sql: Sql): Promise<void>;
  /** removes the extension's files */
  remove(): void;
}

/**
 * Writes the extension's files where the server finds them: on PostgreSQL 18 a temporary directory that
 * extension_control_path (a superuser setting, set for one transaction) points at; before 18 the server's own
 * extension directory (SHAREDIR/extension, from the pg_config view), for the length of the test.
 */
export async function fakePgNet(sql: Sql, script: string): Promise<FakePgNet> {
  const [server] = await sql`
    select current_setting('server_version_num')::int as version,
           (select setting from pg_config where name = 'SHAREDIR') as sharedir
  `;
  const ownDirectory = server!.version >= 180000;
  const dir = ownDirectory ? mkdtempSync(join(tmpdir(), "pgnet-extension-")) : server!.sharedir as string;
  const files = ["pg_net.control", "pg_net--0.20.4.sql"].map((name) => join(dir, "extension", name));
  // never overwrite (and then delete) a real pg_net that this server has
  expect({ existing: files.filter((file) => existsSync(file)) }).toEqual({ existing: [] });
  if (ownDirectory) {
    // the server may run as another account than the tests (when they run as root): it must read the files
    chmodSync(dir, 0o755);
    mkdirSync(join(dir, "extension"), { mode: 0o755 });
  }
  writeFileSync(files[0]!, "default_version = '0.20.4'\nrelocatable = false\n", { mode: 0o644 });
  writeFileSync(files[1]!, script, { mode: 0o644 });
  return {
    async create(target: Sql) {
      await target.begin(async (tx) => {
        if (ownDirectory) await tx.unsafe(`set local extension_control_path = '$system:${dir}'`);
        await tx`create extension pg_net`;
      });
    },
    remove() {
      if (ownDirectory) rmSync(dir, { recursive: true, force: true });
      else for (const file of files) rmSync(file, { force: true });
    },
  };
}
