-- pgnet 0010: a claim moves the request out of the caller's table, as pg_net moves its rows out of the queue.
-- Until now the claim's columns (claimed_by, lease_until, not_before, attempts, retried, last_error) and its two
-- partial indexes (sql/0002) lived on net.http_request_queue, so every net.http_get paid for them inside the
-- caller's transaction. Measured in http_get (20,000 calls a transaction, 15 runs interleaved, PostgreSQL 18,
-- minimum / median): the queue as it was 20.2 / 23.2 µs; without the claim's columns and indexes 15.0 / 18.7 µs
-- (dropped columns, as here); a table created without them 13.5 / 18.1 µs. The queue now holds what a caller
-- inserts and has its primary key only: the claim takes the oldest ids and moves them, in the same statement,
-- into net._http_claim, where they stay while in flight and while a retry waits out its backoff. The claim
-- used to update each row it took, a non-HOT update (claimed_by is in both indexes' predicates) that wrote a
-- new row version and an entry in each index; the move deletes it from the queue and inserts it here instead.
-- As in pg_net, a request no longer shows in net.http_request_queue once a worker has taken it.

-- API: Private
-- Requests a worker took from the queue: in flight under a lease, given back (their lease ended, or the worker
-- stopped), or waiting out a retry's backoff. Written only by the worker; each role reads its own rows.
create table net._http_claim(
  id bigint primary key,
  method net.http_method not null,
  url text not null,
  headers jsonb,
  body bytea,
  timeout_milliseconds int not null,
  enqueued_at timestamptz not null,
  enqueued_by name not null,
  header_order text[],
  raw_response boolean not null default false,
  retry jsonb,
  -- how many times a worker has claimed the request; more than 1 + retried means a worker died holding it
  attempts int not null default 0,
  -- attempts whose outcome was retried
  retried int not null default 0,
  -- the failure of the last attempt that was retried
  last_error text,
  -- the worker holding the lease (NULL: not held, due at not_before)
  claimed_by text,
  -- the lease ends here; after it, any worker may claim the request again
  lease_until timestamptz,
  -- not claimed again before this time (NULL: at once)
  not_before timestamptz
);

-- the claim's and the status's reads, as sql/0002 had them on the queue
create index _http_claim_ready on net._http_claim ((coalesce(not_before, enqueued_at)), id) where claimed_by is null;
create index _http_claim_held on net._http_claim (id) where claimed_by is not null;

revoke all on net._http_claim from public;
grant select on net._http_claim to public;
grant select, insert, update, delete on net._http_claim to pgnet_worker;
alter table net._http_claim enable row level security;
create policy own_requests on net._http_claim for select using (enqueued_by = current_user);
create policy worker on net._http_claim to pgnet_worker using (true) with check (true);

-- the queue in pg_net's mode (pgnet install --unlogged): this table goes with it
do $$
begin
  if (select relpersistence from pg_class where oid = 'net.http_request_queue'::regclass) = 'u' then
    alter table net._http_claim set unlogged;
  end if;
end;
$$;

-- Rows a worker holds or held keep their state: they move here. Rows never claimed stay queued.
insert into net._http_claim(id, method, url, headers, body, timeout_milliseconds, enqueued_at, enqueued_by,
                            header_order, raw_response, retry, attempts, retried, last_error, claimed_by,
                            lease_until, not_before)
select id, method, url, headers, body, timeout_milliseconds, enqueued_at, enqueued_by, header_order, raw_response,
       retry, attempts, retried, last_error, claimed_by, lease_until, not_before
  from net.http_request_queue
 where claimed_by is not null or not_before is not null or attempts > 0 or retried > 0;
delete from net.http_request_queue
 where claimed_by is not null or not_before is not null or attempts > 0 or retried > 0;

drop index net.http_request_queue_ready;
drop index net.http_request_queue_claimed;
-- SELECT … FOR UPDATE, with which the claim locks the rows it moves, needs UPDATE on one column; the worker's were
-- the claim's, dropped here. enqueued_at changes nothing that is sent.
grant update (enqueued_at) on net.http_request_queue to pgnet_worker;
alter table net.http_request_queue
  drop column not_before,
  drop column attempts,
  drop column claimed_by,
  drop column lease_until,
  drop column retried,
  drop column last_error;

-- API: Public
-- Removes one of your requests that has no response yet: queued, in flight (its answer is then not stored) or
-- waiting for a retry.
create or replace function net.http_cancel(
  -- the id returned by http_get, http_post or http_delete
  request_id bigint
)
  returns bool
  language sql
  volatile
  security definer
  set search_path = pg_catalog, pg_temp
as $$
  with queued as (
    delete from net.http_request_queue q
     where q.id = request_id
       and exists (select from pg_roles r
                    where r.rolname = q.enqueued_by and pg_has_role(session_user, r.oid, 'MEMBER'))
    returning 1
  ), claimed as (
    delete from net._http_claim c
     where c.id = request_id
       and exists (select from pg_roles r
                    where r.rolname = c.enqueued_by and pg_has_role(session_user, r.oid, 'MEMBER'))
    returning 1
  )
  select exists (select from queued) or exists (select from claimed)
$$;

comment on function net.http_cancel(bigint) is
  'Removes one of your requests that has no response yet (queued, in flight or waiting for a retry); returns true if there was one';

-- API: Private
-- Waits until the response for request_id is stored. Returns true when it is, false when the id is neither
-- queued, claimed nor answered (unknown, or its response already expired). pg_net waits forever in both cases.
-- A request moves from the queue to net._http_claim to net._http_response, each step one commit of the worker:
-- read in that order, each with its own snapshot, it cannot be missed in between.
create or replace function net._await_response(
  -- the id returned by http_get, http_post or http_delete
  request_id bigint
)
  returns bool
  language plpgsql
  volatile
as $$
declare
  queued_xmin xid;
begin
  loop
    if exists (select 1 from net._http_response r where r.id = request_id) then
      return true;
    end if;

    select q.xmin into queued_xmin from net.http_request_queue q where q.id = request_id;
    if found then
      if queued_xmin = pg_current_xact_id_if_assigned()::xid then
        raise exception 'request % was queued in this transaction: commit before waiting for its response', request_id
          using errcode = '25000';
      end if;
    elsif not exists (select 1 from net._http_claim c where c.id = request_id) then
      -- stored since the first read, or unknown
      return exists (select 1 from net._http_response r where r.id = request_id);
    end if;
    if current_setting('transaction_isolation') <> 'read committed' then
      raise exception 'waiting for a response needs READ COMMITTED, not %', current_setting('transaction_isolation')
        using errcode = '25000',
              hint = 'Each check must see the worker''s latest commit; collect with async => true, or wait outside this transaction.';
    end if;

    perform pg_sleep(0.05);
  end loop;
end;
$$;

-- API: Private
-- The result of a request: PENDING while it is queued, in flight or waiting for a retry, ERROR for a failed
-- request (message is its error_msg) or an unknown id, otherwise SUCCESS with the response (any HTTP status
-- counts as SUCCESS).
create or replace function net._http_collect_response(
  -- request_id reference
  request_id bigint,
  -- when false, wait for the response to be stored
  async bool default true
)
  returns net.http_response_result
  language plpgsql
  volatile
as $$
declare
  rec net._http_response;
begin
  if not async then
    perform net._await_response(request_id);
  end if;

  select * into rec from net._http_response r where r.id = request_id;

  if not found then
    if exists (select 1 from net.http_request_queue q where q.id = request_id)
       or exists (select 1 from net._http_claim c where c.id = request_id) then
      return ('PENDING', 'request is pending', null)::net.http_response_result;
    end if;
    -- the worker may have stored it between the two reads
    select * into rec from net._http_response r where r.id = request_id;
    if not found then
      return ('ERROR', 'request matching request_id not found', null)::net.http_response_result;
    end if;
  end if;

  if rec.error_msg is not null then
    return ('ERROR', rec.error_msg, null)::net.http_response_result;
  end if;

  return (
    'SUCCESS',
    'ok',
    (rec.status_code, rec.headers, rec.content)::net.http_response
  )::net.http_response_result;
end;
$$;

-- API: Private
-- pgnet's privileges and pg_net's, now with net._http_claim (sql/0003 explains the two modes).
create or replace function net._set_privileges(
  -- 'pgnet' (each role its own rows) or 'pg_net' (GRANT ALL to PUBLIC, no row-level security)
  mode text
)
  returns void
  language plpgsql
  volatile
  set search_path = pg_catalog, pg_temp
as $$
begin
  if mode = 'pg_net' then
    alter table net.http_request_queue disable row level security;
    alter table net._http_response disable row level security;
    alter table net._http_dead_letter disable row level security;
    alter table net._http_claim disable row level security;
    grant all on net.http_request_queue, net._http_response, net._http_dead_letter, net._http_claim to public;
    grant all on all sequences in schema net to public;
  elsif mode = 'pgnet' then
    revoke all on net.http_request_queue, net._http_response, net._http_dead_letter, net._http_claim from public;
    revoke all on all sequences in schema net from public;
    grant select on net.http_request_queue, net._http_response, net._http_claim to public;
    grant insert (method, url, headers, body, timeout_milliseconds, header_order, raw_response, retry)
      on net.http_request_queue to public;
    grant select, delete on net._http_dead_letter to public;
    alter table net.http_request_queue enable row level security;
    alter table net._http_response enable row level security;
    alter table net._http_dead_letter enable row level security;
    alter table net._http_claim enable row level security;
  else
    raise exception 'unknown privilege mode "%": expected pgnet or pg_net', mode using errcode = '22023';
  end if;
end;
$$;

-- the mode in force carries over to the new table
do $$
begin
  if not (select relrowsecurity from pg_class where oid = 'net.http_request_queue'::regclass) then
    perform net._set_privileges('pg_net');
  end if;
end;
$$;
