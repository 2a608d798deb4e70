-- pgnet 0006: delivery you can rely on. A request may carry a retry policy; its retries wait in the queue
-- (not_before), so they survive restarts and hold no slot; the response row is stored once, for the final outcome,
-- with the number of attempts; a request that used up its attempts is kept as a dead letter that net.retry()
-- sends again. pg_net's functions carry no policy: they are sent once, as by pg_net (unless the operator sets a
-- default with pgnet --retry-policy).

-- API: Private
-- The request's retry policy (NULL: the worker's --retry-policy, "none" by default), how many of its attempts
-- ended in an outcome that was retried, and what went wrong the last time. `attempts` counts every claim, so
-- attempts - retried is how often a worker stopped holding it without a result (pgnet --max-attempts).
alter table net.http_request_queue add column retry jsonb;
alter table net.http_request_queue add column retried int not null default 0;
alter table net.http_request_queue add column last_error text;

-- API: Public
-- How many attempts the stored outcome took (1 without retries), and what went wrong on the last attempt that
-- failed (NULL when none did). Rows stored before this upgrade have NULL in both.
alter table net._http_response add column attempts int;
alter table net._http_response add column last_error text;

grant insert (retry) on net.http_request_queue to public;
-- the worker puts a request back for its next attempt
grant update (not_before, retried, last_error) on net.http_request_queue to pgnet_worker;

-- API: Private
-- Requests that used up their attempts, as they were queued (the response table alone cannot replay one), for
-- pgnet --dead-letter-ttl (7 days by default). Each role sees and replays only its own.
create table net._http_dead_letter(
  id bigint primary key,
  method text not null,
  url text not null,
  headers jsonb,
  body bytea,
  timeout_milliseconds int not null,
  header_order text[],
  raw_response boolean not null default false,
  retry jsonb,
  enqueued_at timestamptz not null,
  enqueued_by name not null,
  -- the final attempt's outcome: a status code, or an error
  attempts int not null,
  status_code int,
  error_msg text,
  failed_at timestamptz not null default now()
);
create index on net._http_dead_letter (failed_at);
create index on net._http_dead_letter (enqueued_by);

revoke all on net._http_dead_letter from public;
grant select, delete on net._http_dead_letter to public;
grant select, insert, delete on net._http_dead_letter to pgnet_worker;
alter table net._http_dead_letter enable row level security;
create policy own_dead_letters on net._http_dead_letter for select using (enqueued_by = current_user);
create policy discard_own on net._http_dead_letter for delete using (enqueued_by = current_user);
create policy worker on net._http_dead_letter to pgnet_worker using (true) with check (true);

-- API: Public
-- Your requests that used up their retries, newest first: what was sent, how often, and how it ended.
-- net.retry(id) sends one again; `delete from net._http_dead_letter where id = …` discards one.
create view net.http_dead_letters as
  select id, method, url, headers, attempts, status_code, error_msg, enqueued_at, failed_at, retry
    from net._http_dead_letter
   where enqueued_by = current_user
   order by failed_at desc, id desc;
grant select on net.http_dead_letters to public;

-- API: Private
-- Checks a retry policy where it is given, so that a bad one fails in the caller's transaction. The worker applies
-- the same rules (src/retry.ts) to rows inserted directly. Returns the policy unchanged.
create function net._check_retry_policy(policy jsonb)
  returns jsonb
  language plpgsql
  immutable
  set search_path = pg_catalog, pg_temp
as $$
declare
  field text;
  value jsonb;
  low numeric;
  high numeric;
begin
  if policy is null then
    return null;
  end if;
  if jsonb_typeof(policy) <> 'object' then
    raise exception 'a retry policy must be a JSON object such as {"max_attempts": 5}, got a JSON %',
      jsonb_typeof(policy) using errcode = '22023', hint = 'net.retry_policy(5) builds one.';
  end if;
  for field, value in select key, v from jsonb_each(policy) as e(key, v) loop
    if field = 'retry_on' then
      if jsonb_typeof(value) <> 'array' or exists (
        select from jsonb_array_elements(value) o
         where jsonb_typeof(o) <> 'string' or o #>> '{}' !~ '^(connection|timeout|[1-5]xx|[1-5][0-9][0-9])$') then
        raise exception 'retry_on must be an array of "connection", "timeout", "4xx", "5xx" or status codes such as "429", got %',
          value using errcode = '22023';
      end if;
    elsif field in ('max_attempts', 'backoff_ms', 'max_backoff_ms', 'max_retry_after_ms') then
      -- attempts: 1 to 100; durations: up to 7 days
      low := (case when field = 'max_attempts' then 1 else 0 end);
      high := (case when field = 'max_attempts' then 100 else 604800000 end);
      if jsonb_typeof(value) <> 'number' or value::numeric <> trunc(value::numeric) or value::numeric < low
         or value::numeric > high then
        raise exception '% must be an integer from % to %, got %', field, low, high, value using errcode = '22023';
      end if;
    else
      raise exception 'unknown retry policy field "%" (expected max_attempts, retry_on, backoff_ms, max_backoff_ms, max_retry_after_ms)',
        field using errcode = '22023';
    end if;
  end loop;
  return policy;
end;
$$;

-- API: Public
-- Builds a retry policy for net.http_request(retry => …). Retry n (after attempt n) waits a random time between 0
-- and min(max_backoff, backoff · 2^(n−1)) ("full jitter"), or what the server's Retry-After asks, up to
-- max_retry_after. README "Retries" shows the schedule.
create function net.retry_policy(
  -- attempts in all, the first one included (1: no retries); at most 100
  max_attempts int default 5,
  -- the longest wait before the first retry; each later one may wait up to twice as long as the one before
  backoff interval default '1 second',
  -- no wait is longer than this
  max_backoff interval default '10 minutes',
  -- outcomes that are retried: connection (a transport failure), timeout, 4xx, 5xx, or status codes like 429
  retry_on text[] default array['connection', 'timeout', '429', '5xx'],
  -- a longer Retry-After is cut to this
  max_retry_after interval default '1 hour'
)
  returns jsonb
  language sql
  immutable
  set search_path = pg_catalog, pg_temp
as $$
  select net._check_retry_policy(jsonb_build_object(
    'max_attempts', max_attempts,
    'backoff_ms', round(extract(epoch from backoff) * 1000),
    'max_backoff_ms', round(extract(epoch from max_backoff) * 1000),
    'retry_on', to_jsonb(retry_on),
    'max_retry_after_ms', round(extract(epoch from max_retry_after) * 1000)))
$$;

-- API: Public
-- net.http_request, now with a retry policy. The same arguments in the same order, and `retry` last.
drop function net.http_request(text, text, jsonb, jsonb, text, jsonb, jsonb, bytea, int, boolean, json);
create function net.http_request(
  -- url for the request
  url text,
  -- any method token: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, …
  method text default 'GET',
  -- key/value pairs to be url encoded and appended to the `url`
  params jsonb default '{}'::jsonb,
  -- request headers as a JSON object, as in pg_net's functions (sent in jsonb's key order)
  headers jsonb default '{}'::jsonb,
  -- a text body, sent as UTF-8 (Content-Type text/plain; charset=utf-8 unless headers give one)
  body text default null,
  -- a JSON body, sent as jsonb's text as pg_net sends it (Content-Type application/json unless headers give one)
  json_body jsonb default null,
  -- a form body from a JSON object, encoded like params (Content-Type application/x-www-form-urlencoded)
  form_body jsonb default null,
  -- a binary body, sent byte for byte (Content-Type application/octet-stream unless headers give one)
  binary_body bytea default null,
  -- the maximum number of milliseconds the request may take before being cancelled; 0 or less: no limit
  timeout_milliseconds int default 5000,
  -- keep the response's exact bytes in net._http_response.body, even when it is text
  raw_response boolean default false,
  -- instead of headers: a json object, whose headers go out in its order (jsonb sorts keys, json keeps them)
  ordered_headers json default null,
  -- how to retry: net.retry_policy(…) or its JSON; NULL: the worker's default (pgnet --retry-policy, none)
  retry jsonb default null
)
  -- request_id reference
  returns bigint
  language plpgsql
  volatile
as $$
declare
  verb text := upper(method);
  header_object jsonb;
  names text[];
  content_type text;
  default_type text;
  content bytea;
  request_id bigint;
begin
  if method is null or method !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' then
    raise exception 'invalid method %: expected an HTTP method token such as GET, PUT or PATCH',
      coalesce('"' || method || '"', 'NULL')
      using errcode = '22023';
  end if;
  if num_nonnulls(body, json_body, form_body, binary_body) > 1 then
    raise exception 'give at most one body: body (text), json_body, form_body or binary_body'
      using errcode = '22023';
  end if;
  if verb in ('GET', 'HEAD') and num_nonnulls(body, json_body, form_body, binary_body) > 0 then
    raise exception 'a % request has no body: send it with POST, PUT or PATCH', verb
      using errcode = '22023';
  end if;
  if ordered_headers is not null then
    if headers is not null and headers <> '{}'::jsonb then
      raise exception 'give headers or ordered_headers, not both' using errcode = '22023';
    end if;
    if json_typeof(ordered_headers) <> 'object' then
      raise exception 'ordered_headers must be a JSON object, got a JSON %', json_typeof(ordered_headers)
        using errcode = '22023';
    end if;
    header_object := ordered_headers::jsonb;
    select array_agg(key order by n) into names from json_each(ordered_headers) with ordinality as h(key, value, n);
  else
    if headers is not null and jsonb_typeof(headers) <> 'object' then
      raise exception 'headers must be a JSON object, got a JSON %', jsonb_typeof(headers)
        using errcode = '22023',
              hint = 'Pass headers like ''{"Authorization": "Bearer …"}''::jsonb.';
    end if;
    header_object := coalesce(headers, '{}'::jsonb);
  end if;
  select value into content_type from jsonb_each_text(header_object) where lower(key) = 'content-type' limit 1;

  if json_body is not null then
    content := convert_to(json_body::text, 'UTF8');
    default_type := 'application/json';
    if content_type is not null and lower(content_type) !~ '^application/([a-z0-9.+-]*\+)?json\s*(;|$)' then
      raise exception 'a json_body needs a JSON Content-Type (application/json or application/…+json), got "%"',
        content_type using errcode = '22023';
    end if;
  elsif form_body is not null then
    if jsonb_typeof(form_body) <> 'object' then
      raise exception 'form_body must be a JSON object, got a JSON %', jsonb_typeof(form_body) using errcode = '22023';
    end if;
    content := convert_to(array_to_string(net._params_array(form_body), '&'), 'UTF8');
    default_type := 'application/x-www-form-urlencoded';
    if content_type is not null and lower(content_type) !~ '^application/x-www-form-urlencoded\s*(;|$)' then
      raise exception 'a form_body needs Content-Type application/x-www-form-urlencoded, got "%"', content_type
        using errcode = '22023';
    end if;
  elsif body is not null then
    content := convert_to(body, 'UTF8');
    default_type := 'text/plain; charset=utf-8';
  elsif binary_body is not null then
    content := binary_body;
    default_type := 'application/octet-stream';
  end if;
  if content is not null and content_type is null then
    header_object := header_object || jsonb_build_object('Content-Type', default_type);
    if names is not null then
      names := names || 'Content-Type';
    end if;
  end if;

  insert into net.http_request_queue(method, url, headers, body, timeout_milliseconds, header_order, raw_response,
                                     retry)
  values (verb, net._request_url(url, params), header_object, content, timeout_milliseconds, names, raw_response,
          net._check_retry_policy(retry))
  returning id into request_id;

  perform pg_notify('pgnet_wake', '');
  return request_id;
end;
$$;

comment on function net.http_request(text, text, jsonb, jsonb, text, jsonb, jsonb, bytea, int, boolean, json, jsonb) is
  'Queues an HTTP request with any method, any body and an optional retry policy, sent after the transaction commits; returns the request id';

-- API: Public
-- Sends dead letters again: each goes back to the queue as a new request (a new id, fresh attempts, the same
-- method, URL, headers, body and policy) and leaves the dead letters. Only your own; others are skipped.
-- Returns each old id with its new one.
create function net.retry(
  -- ids from net.http_dead_letters
  request_ids bigint[]
)
  returns table(request_id bigint, new_request_id bigint)
  language plpgsql
  volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  d net._http_dead_letter;
begin
  -- row-level security: the delete finds only your own
  for d in delete from net._http_dead_letter l where l.id = any(request_ids) returning l.* loop
    insert into net.http_request_queue(method, url, headers, body, timeout_milliseconds, header_order,
                                       raw_response, retry)
    values (d.method, d.url, d.headers, d.body, d.timeout_milliseconds, d.header_order, d.raw_response, d.retry)
    returning id into new_request_id;
    request_id := d.id;
    return next;
  end loop;
  if found then
    perform pg_notify('pgnet_wake', '');
  end if;
end;
$$;

-- API: Public
-- Sends one dead letter again (see net.retry(bigint[])); returns the new request id.
create function net.retry(
  -- an id from net.http_dead_letters
  request_id bigint
)
  returns bigint
  language plpgsql
  volatile
  set search_path = pg_catalog, pg_temp
as $$
declare
  new_id bigint;
begin
  select r.new_request_id into new_id from net.retry(array[request_id]) r;
  if new_id is null then
    raise exception 'request % is not one of your dead letters', coalesce(request_id::text, 'NULL')
      using errcode = '22023', hint = 'select id from net.http_dead_letters lists them.';
  end if;
  return new_id;
end;
$$;

comment on function net.retry(bigint) is 'Sends one of your dead letters again; returns the new request id';
comment on function net.retry(bigint[]) is 'Sends your dead letters with these ids again; returns old and new ids';

-- API: Private
-- pgnet's privileges and pg_net's, now with dead letters and the retry column (sql/0003 explains the two modes).
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
    grant all on net.http_request_queue, net._http_response, net._http_dead_letter to public;
    grant all on all sequences in schema net to public;
  elsif mode = 'pgnet' then
    revoke all on net.http_request_queue, net._http_response, net._http_dead_letter from public;
    revoke all on all sequences in schema net from public;
    grant select on net.http_request_queue, net._http_response to public;
    grant insert (method, url, headers, body, timeout_milliseconds, header_order, raw_response, retry)
      on net.http_request_queue to public;
    grant select, delete on net._http_dead_letter to public;
    alter table net.http_request_queue enable row level security;
    alter table net._http_response enable row level security;
    alter table net._http_dead_letter enable row level security;
  else
    raise exception 'unknown privilege mode "%": expected pgnet or pg_net', mode using errcode = '22023';
  end if;
end;
$$;
