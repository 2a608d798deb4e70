-- pgnet 0012: the wake says where to look. The first enqueue of a transaction sends the worker its request's id
-- as the notification's payload (it was ''), and nothing else changes: net._enqueue is sql/0009's and
-- net.http_request sql/0011's otherwise, line for line.
-- The worker's claims read the queue by id from where the last one stopped (src/cursor.ts), not from the start
-- of its primary key: the entries of claimed rows stay in that index until VACUUM, and a claim starting at the
-- head walked every one of them. A request committed after later ids were claimed (ids are taken at insert, rows
-- seen at commit) is behind that point; its transaction's notification, sent at commit, carries its first id, and
-- the next claim reads from there. Later requests of the same transaction have higher ids. The payload is not
-- trusted: any role may notify, and a forged id can only make a claim start earlier, as every claim did before;
-- an empty or malformed payload (net.retry(), net.wake(), an older schema) starts it at the head. The id tells a
-- listener how many ids were taken since the last one it saw; the notification itself already told it when.


-- API: Private
-- Validates one request, queues it and wakes the worker at commit, once a transaction (sql/0009), with its id.
create or replace function net._enqueue(
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
  full_url text;
  request_id bigint;
begin
  -- first, as in pg_net: a bad params object or URL is the error reported
  full_url := net._request_url(url, params);
  if headers is not null and jsonb_typeof(headers) <> 'object' then
    raise exception 'headers must be a JSON object, got a JSON %', jsonb_typeof(headers)
      using errcode = '22023',
            hint = 'Pass headers like ''{"Authorization": "Bearer …"}''::jsonb.';
  end if;

  -- the URL is a variable, not an expression in the VALUES: inlined into the INSERT it cost ~4 µs more a call
  insert into net.http_request_queue(method, url, headers, body, timeout_milliseconds)
  values (method, full_url, headers, body, timeout_milliseconds)
  returning id into request_id;

  if pg_catalog.current_setting('pgnet.woken', true) is distinct from 'yes' then
    perform pg_catalog.pg_notify('pgnet_wake', request_id::text);
    perform pg_catalog.set_config('pgnet.woken', 'yes', true);
  end if;
  return request_id;
end;
$$;

-- API: Public
-- net.http_request: any method, any body, an optional retry policy (sql/0006); the wake once a transaction
-- (sql/0011), with the id of the request that sends it.
create or replace function net.http_request(
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

  if pg_catalog.current_setting('pgnet.woken', true) is distinct from 'yes' then
    perform pg_catalog.pg_notify('pgnet_wake', request_id::text);
    perform pg_catalog.set_config('pgnet.woken', 'yes', true);
  end if;
  return request_id;
end;
$$;

comment on function net.http_request(text, text, jsonb, jsonb, text, jsonb, jsonb, bytea, int, boolean, json, jsonb) is
  'Queues an HTTP request with any method, any body and an optional retry policy, sent after the transaction commits; returns the request id';
