-- pgnet 0008: a cheaper enqueue in the caller's transaction, with every check and error text kept.
-- Measured with `npm run bench -- --only enqueue` (100,000 calls in one transaction, an ordinary role under
-- row-level security, PostgreSQL 18), the commit before and this one back to back in one session: see README
-- "Performance" for the figures. Where the time went, each part measured alone (20,000 calls, minimum of 9):
-- - The shortcut for plain URLs took ports of at most four digits: a URL on port 10000 or above (every
--   ephemeral port, the benchmark's target's too) went through the full parser, half of the call. It now takes
--   every port from 1 to 65535. Its regular expression cost 1.7 µs with the bounded repeat and optional groups;
--   one without them and a few string functions cost 0.6 µs.
-- - http_get, http_post and http_delete called _enqueue (and http_post _json_request) from PL/pgSQL, one call
--   frame and one expression setup each; they are plain SQL now and the planner inlines them, so a call is one
--   PL/pgSQL function (_enqueue, unchanged), and http_post's default headers are decided when the statement is
--   planned.
-- - What is left is the insert, ~75 % of a call: PostgreSQL sets up an executor for each single-row INSERT,
--   and that setup grows with the table. pg_net's six columns with a primary key: 7.2 µs; pgnet's queue with
--   its seventeen columns, the primary key and the two partial indexes of the claim (sql/0002) under row-level
--   security: 14.3 µs, in the same run. Another run split the difference: the columns ~2.9 µs, the ready index
--   ~2.6, the claimed one ~0.4, the policy ~0.4. The claim's columns and indexes live on the row the caller
--   inserts; moving a claimed row to a table of its own, as pg_net moves its rows out of the queue, would leave
--   the caller's insert near pg_net's.

-- API: Private
-- The URL a request is sent to: validated and normalised by the parser, with the params appended. A URL the parser
-- would return unchanged skips it: lower-case http or https, a host of letters, digits, dots and hyphens, a port
-- from 1 to 65535 without leading zeros, a path of unreserved, sub-delim, ':', '@', '%' and '/' characters with no
-- dot-segment ('/.' anywhere sends it to the parser), a query of the same characters and '?' that is not empty,
-- no fragment, no params. The test "the enqueue's shortcut for plain URLs stores exactly what the full parser
-- returns" holds the two together. Plain SQL, so the planner inlines it into _enqueue (sql/0004), which stays the
-- one PL/pgSQL function of a call; one regular expression without captures or bounded repeats (PostgreSQL's
-- engine runs '{0,3}' and optional groups several times slower) and string functions for the rest.
create or replace function net._request_url(
  -- the URL as given
  url text,
  -- a JSON object of query parameters, or NULL
  params jsonb
)
  returns text
  language sql
  immutable
as $$
  select case
    when (params is null or params = '{}'::jsonb)
     and url ~ '^https?://[A-Za-z0-9.:-]+/[A-Za-z0-9._~!$&''()*+,;=:@%/?-]*$'
     and strpos(url, '/.') = 0
     and right(url, 1) <> '?'
     and (strpos(split_part(url, '/', 3), ':') = 0
          or (split_part(url, '/', 3) ~ '^[A-Za-z0-9.-]+:[1-9][0-9]{0,4}$'
              and split_part(split_part(url, '/', 3), ':', 2)::int <= 65535))
    then url
    else net._encode_url_with_params_array(url, net._params_array(params))
  end
$$;

-- API: Private
-- http_post's rule for a JSON body's headers, any method: the first content-type header (any case, jsonb order)
-- must be exactly "application/json"; without one it is added (and headers NULL stays NULL). Stable, not
-- immutable, so a constant that breaks the rule fails when the call runs, not when a statement is planned.
create function net._json_headers_checked(
  -- request headers as given
  headers jsonb
)
  returns jsonb
  language plpgsql
  stable
as $$
declare
  content_type text;
begin
  select header_value into content_type
    from jsonb_each_text(coalesce(headers, '{}'::jsonb)) r(header_name, header_value)
   where lower(header_name) = 'content-type'
   limit 1;
  if content_type is null then
    return headers || '{"Content-Type": "application/json"}'::jsonb;
  end if;
  if content_type <> 'application/json' then
    raise exception 'Content-Type header must be "application/json"';
  end if;
  return headers;
end;
$$;

-- API: Private
-- The headers a JSON request is sent with. The default headers pass as they are: inlined, a call with them is
-- decided when the statement is planned.
create function net._json_headers(
  -- request headers as given
  headers jsonb
)
  returns jsonb
  language sql
  stable
as $$
  select case
    when headers = '{"Content-Type": "application/json"}'::jsonb then headers
    else net._json_headers_checked(headers)
  end
$$;

-- API: Private
-- A request with a JSON body: the headers checked by http_post's rule (before the URL, as in pg_net), the body
-- sent as its UTF-8 text.
create or replace function net._json_request(
  -- POST, PUT or PATCH
  method text,
  -- url for the request
  url text,
  -- the JSON body
  body jsonb,
  -- query parameters
  params jsonb,
  -- request headers
  headers jsonb,
  -- the request's timeout
  timeout_milliseconds int
)
  returns bigint
  language sql
  volatile
as $$
  select net._enqueue(
    method::net.http_method, url, params, net._json_headers(headers), convert_to(body::text, 'UTF8'),
    timeout_milliseconds)
$$;

-- API: Public
create or replace function net.http_get(
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
  language sql
  volatile
as $$
  select net._enqueue('GET', url, params, headers, null, timeout_milliseconds)
$$;

-- API: Public
create or replace function net.http_post(
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
  language sql
  volatile
as $$
  select net._json_request('POST', url, body, params, headers, timeout_milliseconds)
$$;

-- API: Public
create or replace function net.http_delete(
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
  language sql
  volatile
as $$
  select net._enqueue('DELETE', url, params, headers, convert_to(body::text, 'UTF8'), timeout_milliseconds)
$$;
