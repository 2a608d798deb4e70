-- pgnet 0005: beyond pg_net's API. net.http_request sends any method with any kind of body; PUT, PATCH and HEAD
-- have functions of their own; the exact bytes of a response are kept when it is not text, or when asked. Every
-- pg_net function keeps its exact signature and behaviour.

-- API: Public
-- Any HTTP method token (RFC 9110 §9), not just GET, POST and DELETE. Methods are sent upper-cased.
alter domain net.http_method drop constraint http_method_check;
alter domain net.http_method add constraint http_method_check check (value ~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$');

-- The caller's header names in the caller's order (jsonb keeps object keys sorted), and whether to keep the
-- response's exact bytes in net._http_response.body.
alter table net.http_request_queue add column header_order text[];
alter table net.http_request_queue add column raw_response boolean not null default false;
-- The response's exact bytes: set when the request asked for them, or when the body is not valid UTF-8 text or
-- holds a NUL byte (then content, pg_net's text, is not the body as received). NULL otherwise: bodies are not
-- stored twice.
alter table net._http_response add column body bytea;

grant insert (header_order, raw_response) on net.http_request_queue to public;

-- API: Public
-- Queues an HTTP request with any method and any kind of body; sent after the transaction commits.
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
  ordered_headers json default null
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

  insert into net.http_request_queue(method, url, headers, body, timeout_milliseconds, header_order, raw_response)
  values (verb, net._request_url(url, params), header_object, content, timeout_milliseconds, names, raw_response)
  returning id into request_id;

  perform pg_notify('pgnet_wake', '');
  return request_id;
end;
$$;

comment on function net.http_request(text, text, jsonb, jsonb, text, jsonb, jsonb, bytea, int, boolean, json) is
  'Queues an HTTP request with any method and any body (body, json_body, form_body or binary_body), sent after the transaction commits; returns the request id';

-- API: Public
-- pg_net's http_post, with PUT and PATCH: the same JSON body, Content-Type rule and defaults.
create function net.http_put(
  -- url for the request
  url text,
  -- body of the PUT request
  body jsonb default '{}'::jsonb,
  -- key/value pairs to be url encoded and appended to the `url`
  params jsonb default '{}'::jsonb,
  -- key/values to be included in request headers
  headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
  -- the maximum number of milliseconds the request may take before being cancelled
  timeout_milliseconds int default 5000
)
  returns bigint
  language sql
  volatile
as $$
  select net._json_request('PUT', url, body, params, headers, timeout_milliseconds)
$$;

comment on function net.http_put(text, jsonb, jsonb, jsonb, int) is
  'Queues an HTTP PUT request with a JSON body, sent after the transaction commits; returns the request id';

-- API: Public
create function net.http_patch(
  -- url for the request
  url text,
  -- body of the PATCH request
  body jsonb default '{}'::jsonb,
  -- key/value pairs to be url encoded and appended to the `url`
  params jsonb default '{}'::jsonb,
  -- key/values to be included in request headers
  headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
  -- the maximum number of milliseconds the request may take before being cancelled
  timeout_milliseconds int default 5000
)
  returns bigint
  language sql
  volatile
as $$
  select net._json_request('PATCH', url, body, params, headers, timeout_milliseconds)
$$;

comment on function net.http_patch(text, jsonb, jsonb, jsonb, int) is
  'Queues an HTTP PATCH request with a JSON body, sent after the transaction commits; returns the request id';

-- API: Public
create function net.http_head(
  -- url for the request
  url text,
  -- key/value pairs to be url encoded and appended to the `url`
  params jsonb default '{}'::jsonb,
  -- key/values to be included in request headers
  headers jsonb default '{}'::jsonb,
  -- the maximum number of milliseconds the request may take before being cancelled
  timeout_milliseconds int default 5000
)
  returns bigint
  language sql
  volatile
as $$
  select net._enqueue('HEAD', url, params, headers, null, timeout_milliseconds)
$$;

comment on function net.http_head(text, jsonb, jsonb, int) is
  'Queues an HTTP HEAD request, sent after the transaction commits; returns the request id';

-- API: Public
-- The exact bytes of a response body: for text, what content holds; otherwise what body holds. NULL for a failed
-- request or an unknown id; with async => false, waits for the response first, as _http_collect_response does.
create function net.http_response_body(
  -- request_id reference
  request_id bigint,
  -- when false, wait for the response to be stored
  async bool default true
)
  returns bytea
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
  if not found or rec.error_msg is not null then
    return null;
  end if;
  return coalesce(rec.body, convert_to(coalesce(rec.content, ''), 'UTF8'));
end;
$$;

comment on function net.http_response_body(bigint, bool) is
  'The exact bytes of a stored response body (binary responses included); NULL for a failed or unknown request';

-- API: Private
-- pgnet's privileges and pg_net's, now with the queue's new columns (sql/0003 explains the two modes).
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
    grant all on net.http_request_queue, net._http_response to public;
    grant all on all sequences in schema net to public;
  elsif mode = 'pgnet' then
    revoke all on net.http_request_queue, net._http_response from public;
    revoke all on all sequences in schema net from public;
    grant select on net.http_request_queue, net._http_response to public;
    grant insert (method, url, headers, body, timeout_milliseconds, header_order, raw_response)
      on net.http_request_queue to public;
    alter table net.http_request_queue enable row level security;
    alter table net._http_response enable row level security;
  else
    raise exception 'unknown privilege mode "%": expected pgnet or pg_net', mode using errcode = '22023';
  end if;
end;
$$;
