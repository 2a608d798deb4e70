-- pgnet 0011: net.http_request wakes the worker once per transaction, as net._enqueue does since sql/0009 (the
-- first call notifies and marks the transaction with the transaction-local setting pgnet.woken; later calls, from
-- either function, see the mark and skip the notify). The function is sql/0006's otherwise, argument for argument.

-- API: Public
-- net.http_request: any method, any body, an optional retry policy (sql/0006); the wake once a transaction.
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
    perform pg_catalog.pg_notify('pgnet_wake', '');
    perform pg_catalog.set_config('pgnet.woken', 'yes', true);
  end if;
  return request_id;
end;
$$;

comment on function net.http_request(text, text, jsonb, jsonb, text, jsonb, jsonb, bytea, int, boolean, json, jsonb) is
  'Queues an HTTP request with any method, any body and an optional retry policy, sent after the transaction commits; returns the request id';
