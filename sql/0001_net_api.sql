-- pgnet 0001: pg_net 0.20's SQL API (schema net) in plain SQL and PL/pgSQL, served by pgnet's external worker.
-- Names, argument names, argument order, defaults and return types follow pg_net 0.20.4's fresh-install script
-- (../shared/pg_net-behavior.md §1). The installer creates schema net and net._pgnet_migrations before this file.

-- API: Public
create domain net.http_method as text
check (
  value ilike 'get'
  or value ilike 'post'
  or value ilike 'delete'
);

-- API: Private
-- The queue. pg_net's six columns first, in pg_net's order; the rest are pgnet's and have defaults, so
-- `insert into net.http_request_queue(method, url, headers, body, timeout_milliseconds)` keeps working.
create table net.http_request_queue(
  id bigserial primary key,
  method net.http_method not null,
  url text not null,
  headers jsonb,
  body bytea,
  timeout_milliseconds int not null,
  -- when the request was enqueued
  enqueued_at timestamptz not null default now(),
  -- the request is not claimed before this time (NULL: at once); room for retries with backoff
  not_before timestamptz,
  -- how many times a worker has claimed the request; more than 1 means a worker died holding it
  attempts int not null default 0,
  -- the worker holding the lease (NULL: unclaimed)
  claimed_by text,
  -- the lease ends here; after it, any worker may claim the request again
  lease_until timestamptz
);

-- API: Private
-- The responses. pg_net's columns in pg_net's order (PL/pgSQL code reads them with `select * into rec`).
create table net._http_response(
  id bigint,
  status_code integer,
  content_type text,
  headers jsonb,
  content text,
  timed_out bool,
  error_msg text,
  created timestamptz not null default now()
);

create index on net._http_response (created);
-- One response row per request id, whatever happens: two workers racing at a lease boundary both try to
-- store a result, and `on conflict do nothing` keeps the first. pg_net has no index here (collect scans).
create unique index _http_response_id_key on net._http_response (id);

-- API: Public
create type net.request_status as enum ('PENDING', 'SUCCESS', 'ERROR');

-- API: Public
create type net.http_response as (
  status_code integer,
  headers jsonb,
  body text
);

-- API: Public
create type net.http_response_result as (
  status net.request_status,
  message text,
  response net.http_response
);

-- API: Private
-- Percent-encodes every UTF-8 byte outside A-Z a-z 0-9 - . _ ~ with uppercase hex, as curl_easy_escape does.
create function net._urlencode_string(string varchar)
  -- the text to encode; NULL gives NULL
  returns text
  language sql
  immutable
  parallel safe
as $$
  select case
    when string is null then null
    else coalesce(
      (select string_agg(
                case
                  when c ~ '^[A-Za-z0-9._~-]$' then c
                  else upper(regexp_replace(encode(convert_to(c, 'UTF8'), 'hex'), '(..)', '%\1', 'g'))
                end,
                '' order by n)
         from unnest(string_to_array(string::text, null)) with ordinality as t(c, n)),
      '')
  end
$$;

-- API: Private
-- Raises pg_net's error for a URL libcurl would reject: invalid URL "<url>": <libcurl's reason>.
create function net._invalid_url(url text, reason text)
  returns void
  language plpgsql
  immutable
as $$
begin
  raise exception 'invalid URL "%": %', url, reason using errcode = '22023';
end;
$$;

-- API: Private
-- Parses and normalises a URL the way libcurl's URL API does for pg_net (scheme lower-cased, host case kept,
-- empty path becomes "/", an empty "?" is dropped, dot-segments removed), validates it with libcurl's error
-- texts, and appends each non-empty element of params_array to the query, before any #fragment.
-- Elements are appended as given: callers encode them with net._urlencode_string.
create function net._encode_url_with_params_array(
  -- the URL to validate and normalise
  url text,
  -- query parts such as 'a=1', appended in order with '&'; NULL and '' elements are skipped
  params_array text[]
)
  returns text
  language plpgsql
  immutable
as $$
declare
  -- schemes libcurl's URL parser knows; the worker sends only http and https (others: "Unsupported protocol")
  known_schemes constant text[] := array[
    'http', 'https', 'ftp', 'ftps', 'file', 'dict', 'gopher', 'gophers', 'imap', 'imaps', 'ldap', 'ldaps',
    'mqtt', 'pop3', 'pop3s', 'rtsp', 'scp', 'sftp', 'smb', 'smbs', 'smtp', 'smtps', 'telnet', 'tftp'];
  bad_char constant text := '[\x01-\x20\x7f]';
  m text[];
  scheme text;
  rest text;
  authority text;
  userinfo text := '';
  host text;
  port text := '';
  path text;
  query text;
  fragment text;
  segment text;
  segments text[];
  kept text[] := '{}';
  i int;
  param text;
begin
  if url is null or params_array is null then
    return null;
  end if;
  if length(url) > 8000000 then
    perform net._invalid_url(url, 'Malformed input to a URL function');
  end if;

  m := regexp_match(url, '^([A-Za-z][A-Za-z0-9+.-]{0,39}):(.*)$');
  if m is null then
    perform net._invalid_url(url, 'Bad scheme');
  end if;
  scheme := lower(m[1]);
  rest := m[2];
  if not scheme = any(known_schemes) then
    perform net._invalid_url(url, 'Unsupported URL scheme');
  end if;

  m := regexp_match(rest, '^(/*)(.*)$');
  if length(m[1]) not between 1 and 3 then
    perform net._invalid_url(url, 'Unsupported number of slashes following scheme');
  end if;
  rest := m[2];

  if scheme = 'file' then
    -- file://[localhost]/path: no host, the rest is the path
    if rest ~ bad_char then
      perform net._invalid_url(url, 'Bad file:// URL');
    end if;
    return 'file:///' || regexp_replace(rest, '^localhost/', '');
  end if;

  m := regexp_match(rest, '^([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?$');
  authority := m[1];
  path := m[2];
  query := coalesce(substr(m[3], 2), '');
  fragment := coalesce(m[4], '');

  if fragment ~ bad_char then
    perform net._invalid_url(url, 'Bad fragment');
  end if;
  if query ~ bad_char then
    perform net._invalid_url(url, 'Bad query');
  end if;
  if path ~ bad_char then
    perform net._invalid_url(url, 'Bad path');
  end if;

  if strpos(authority, '@') > 0 then
    userinfo := substring(authority from '^(.*)@');
    authority := substring(authority from '^.*@(.*)$');
    if userinfo ~ bad_char then
      perform net._invalid_url(url, 'Bad login part');
    end if;
    userinfo := userinfo || '@';
  end if;

  if left(authority, 1) = '[' then
    m := regexp_match(authority, '^(\[[^\]]*\])(.*)$');
    if m is null or m[1] !~ '^\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9._~-]+)?\]$' then
      perform net._invalid_url(url, 'Bad IPv6 address');
    end if;
    host := m[1];
    if m[2] <> '' then
      if left(m[2], 1) <> ':' then
        perform net._invalid_url(url, 'Bad IPv6 address');
      end if;
      port := substr(m[2], 2);
    end if;
  elsif strpos(authority, ':') > 0 then
    host := substring(authority from '^(.*):');
    port := substring(authority from ':([^:]*)$');
  else
    host := authority;
  end if;

  if host = '' then
    perform net._invalid_url(url, 'No host part in the URL');
  end if;
  if port <> '' then
    if port !~ '^[0-9]{1,5}$' or port::int > 65535 then
      perform net._invalid_url(url, 'Port number was not a decimal number between 0 and 65535');
    end if;
    port := ':' || port::int;
  end if;
  if host ~ '[\x01-\x20\x7f/#?!@{}\\$''"^`*<>=;,+&()%]' or (left(host, 1) <> '[' and host ~ '[\[\]]') then
    perform net._invalid_url(url, 'Bad hostname');
  end if;

  -- RFC 3986 §5.2.4 remove_dot_segments, only when there are any
  if path = '' then
    path := '/';
  elsif path ~ '(^|/)\.\.?(/|$)' then
    segments := string_to_array(substr(path, 2), '/');
    for i in 1 .. coalesce(array_length(segments, 1), 0) loop
      segment := segments[i];
      if segment = '.' or segment = '..' then
        if segment = '..' and cardinality(kept) > 0 then
          kept := kept[1:cardinality(kept) - 1];
        end if;
        if i = array_length(segments, 1) then
          kept := kept || ''::text;
        end if;
      else
        kept := kept || segment;
      end if;
    end loop;
    path := '/' || array_to_string(kept, '/');
  end if;

  foreach param in array params_array loop
    if param is not null and param <> '' then
      if query = '' or right(query, 1) = '&' then
        query := query || param;
      else
        query := query || '&' || param;
      end if;
    end if;
  end loop;

  return scheme || '://' || userinfo || host || port || path
    || case when query = '' then '' else '?' || query end
    || fragment;
end;
$$;

-- API: Private
-- Turns a params object into encoded query parts, in jsonb key order, dropping JSON nulls, as pg_net does.
create function net._params_array(
  -- a JSON object of query parameters; NULL means none
  params jsonb
)
  returns text[]
  language sql
  immutable
as $$
  select coalesce(array_agg(net._urlencode_string(key) || '=' || net._urlencode_string(value)), '{}')
    from jsonb_each_text(params)
$$;

-- API: Public
-- Wakes the pgnet worker when the calling transaction commits: once per transaction, never on rollback.
create function net.wake()
  returns void
  language sql
  volatile
as $$
  select pg_notify('pgnet_wake', '')
$$;

-- API: Private
-- Validates one request, queues it and wakes the worker at commit. The public functions build on it.
create function net._enqueue(
  -- GET, POST or DELETE
  method net.http_method,
  -- the URL, validated and normalised here, with the params appended
  url text,
  -- a JSON object of query parameters, or NULL
  params jsonb,
  -- request headers as a JSON object, or NULL
  headers jsonb,
  -- request body bytes, or NULL
  body bytea,
  -- total time allowed for the request; 0 or less means no limit
  timeout_milliseconds int
)
  returns bigint
  language plpgsql
  volatile
as $$
declare
  -- first, as in pg_net: a bad params object or URL is the error reported
  full_url text := net._encode_url_with_params_array(url, net._params_array(params));
  request_id bigint;
begin
  if headers is not null and jsonb_typeof(headers) <> 'object' then
    raise exception 'headers must be a JSON object, got a JSON %', jsonb_typeof(headers)
      using errcode = '22023',
            hint = 'Pass headers like ''{"Authorization": "Bearer …"}''::jsonb.';
  end if;

  insert into net.http_request_queue(method, url, headers, body, timeout_milliseconds)
  values (method, full_url, headers, body, timeout_milliseconds)
  returning id into request_id;

  perform net.wake();
  return request_id;
end;
$$;

-- API: Public
create function net.http_get(
  -- url for the request
  url text,
  -- key/value pairs to be url encoded and appended to the `url`
  params jsonb default '{}'::jsonb,
  -- key/values to be included in request headers
  headers jsonb default '{}'::jsonb,
  -- the maximum number of milliseconds the request may take before being cancelled
  timeout_milliseconds int default 5000
)
  -- request_id reference
  returns bigint
  language plpgsql
  volatile
as $$
begin
  return net._enqueue(
    'GET',
    url,
    params,
    headers,
    null,
    timeout_milliseconds
  );
end;
$$;

comment on function net.http_get(text, jsonb, jsonb, int) is
  'Queues an HTTP GET request, sent after the transaction commits; returns the request id to look up in net._http_response';

-- API: Public
create function net.http_post(
  -- url for the request
  url text,
  -- body of the POST request
  body jsonb default '{}'::jsonb,
  -- key/value pairs to be url encoded and appended to the `url`
  params jsonb default '{}'::jsonb,
  -- key/values to be included in request headers
  headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
  -- the maximum number of milliseconds the request may take before being cancelled
  timeout_milliseconds int default 5000
)
  -- request_id reference
  returns bigint
  language plpgsql
  volatile
as $$
declare
  content_type text;
begin
  -- pg_net's rule, kept exactly: the first content-type header (any case, jsonb order) must be
  -- "application/json"; without one, it is added (and headers NULL stays NULL).
  select header_value into content_type
    from jsonb_each_text(coalesce(headers, '{}'::jsonb)) r(header_name, header_value)
   where lower(header_name) = 'content-type'
   limit 1;

  if content_type is null then
    headers := headers || '{"Content-Type": "application/json"}'::jsonb;
  end if;

  if content_type <> 'application/json' then
    raise exception 'Content-Type header must be "application/json"';
  end if;

  return net._enqueue(
    'POST',
    url,
    params,
    headers,
    convert_to(body::text, 'UTF8'),
    timeout_milliseconds
  );
end;
$$;

comment on function net.http_post(text, jsonb, jsonb, jsonb, int) is
  'Queues an HTTP POST request with a JSON body, sent after the transaction commits; returns the request id';

-- API: Public
create function net.http_delete(
  -- url for the request
  url text,
  -- key/value pairs to be url encoded and appended to the `url`
  params jsonb default '{}'::jsonb,
  -- key/values to be included in request headers
  headers jsonb default '{}'::jsonb,
  -- the maximum number of milliseconds the request may take before being cancelled
  timeout_milliseconds int default 5000,
  -- optional body of the DELETE request
  body jsonb default null
)
  -- request_id reference
  returns bigint
  language plpgsql
  volatile
as $$
begin
  return net._enqueue(
    'DELETE',
    url,
    params,
    headers,
    convert_to(body::text, 'UTF8'),
    timeout_milliseconds
  );
end;
$$;

comment on function net.http_delete(text, jsonb, jsonb, int, jsonb) is
  'Queues an HTTP DELETE request, sent after the transaction commits; returns the request id';

-- API: Private
-- Waits until the response for request_id is stored. Returns true when it is, false when the id is neither
-- queued nor answered (unknown, or its response already expired). pg_net waits forever in both cases.
create function net._await_response(
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
    if not found then
      return false;
    end if;
    if queued_xmin = pg_current_xact_id_if_assigned()::xid then
      raise exception 'request % was queued in this transaction: commit before waiting for its response', request_id
        using errcode = '25000';
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
-- The result of a request: PENDING while it is queued or in flight, ERROR for a failed request (message is
-- its error_msg) or an unknown id, otherwise SUCCESS with the response (any HTTP status counts as SUCCESS).
create function net._http_collect_response(
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
    if exists (select 1 from net.http_request_queue q where q.id = request_id) then
      return ('PENDING', 'request is pending', null)::net.http_response_result;
    end if;
    return ('ERROR', 'request matching request_id not found', null)::net.http_response_result;
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

-- API: Public (deprecated)
-- pg_net's version raises "query has no destination for result data"; this one returns the result.
create function net.http_collect_response(
  -- request_id reference
  request_id bigint,
  -- when false, wait for the response to be stored
  async bool default true
)
  returns net.http_response_result
  language plpgsql
  volatile
as $$
begin
  raise notice 'The net.http_collect_response function is deprecated.';
  return net._http_collect_response(request_id, async);
end;
$$;

comment on function net.http_collect_response(bigint, bool) is
  'Deprecated: use net._http_collect_response or read net._http_response';

-- API: Private
-- True when a pgnet worker serves this database. Workers announce themselves with the application_name
-- "pgnet <version> worker" on their LISTEN connection: pg_stat_activity shows application_name to every
-- role, unlike backend_type (pg_net's check raises for ordinary roles even when its worker is up).
create function net._worker_is_up()
  returns bool
  language sql
  volatile
as $$
  select exists (
    select 1
      from pg_stat_activity a
     where a.datname = current_database()
       and a.application_name like 'pgnet % worker'
  )
$$;

-- API: Public
-- Asks every pgnet worker serving this database to re-read its settings and reconnect. Like every
-- notification, it is delivered when the calling transaction commits (pg_net's acts at once).
create function net.worker_restart()
  returns bool
  language sql
  volatile
as $$
  select pg_notify('pgnet_control', 'restart');
  select true;
$$;

comment on function net.worker_restart() is
  'Makes the pgnet worker re-read its settings and reconnect once the calling transaction commits';

-- API: Public
create function net.wait_until_running()
  returns void
  language plpgsql
  volatile
as $$
begin
  loop
    -- pg_stat_activity is a snapshot taken once per transaction unless cleared
    perform pg_stat_clear_snapshot();
    exit when net._worker_is_up();
    perform pg_sleep(0.05);
  end loop;
end;
$$;

comment on function net.wait_until_running() is 'waits until the worker is running';

-- API: Public
create function net.check_worker_is_up()
  returns void
  language plpgsql
  volatile
as $$
begin
  perform pg_stat_clear_snapshot();
  if not net._worker_is_up() then
    raise exception using
      message = 'the pg_net background worker is not up',
      detail  = 'no pgnet worker is connected to this database, so queued requests are not being sent',
      hint    = 'start it with `pgnet --database <this database>`';
  end if;
end;
$$;

comment on function net.check_worker_is_up() is
  'raises an exception if the pg_net background worker is not up, otherwise it doesn''t return anything';

grant usage on schema net to public;
grant all on all sequences in schema net to public;
grant all on all tables in schema net to public;

-- the installer's bookkeeping is readable by all, writable by its owner only
revoke all on net._pgnet_migrations from public;
grant select on net._pgnet_migrations to public;
