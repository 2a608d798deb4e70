-- pgnet 0009: the enqueue wakes the worker once per transaction, not once per call.
-- pg_notify('pgnet_wake', '') on every call: PostgreSQL builds the notification and looks for its twin in the
-- transaction's pending list each time, only to drop it. Measured in http_get (20,000 calls a transaction, 21
-- runs interleaved, PostgreSQL 18, a noisy 2-core VM, minimum and median): a notify on every call 19.5 / 24.7 µs,
-- this check 17.6 / 24.7 µs, no wake at all 16.2 / 23.6 µs. The first call in a transaction notifies and marks
-- the transaction with a transaction-local setting; later calls see the mark and skip the notify. Both live and
-- die with the transaction and with each subtransaction: a rolled-back savepoint takes its notification and its
-- mark away together, so the next call notifies again. A session that sets pgnet.woken itself only makes its own
-- requests wait for the worker's poll. net.http_request (sql/0006) still notifies on every call.

-- API: Private
-- Validates one request, queues it and wakes the worker at commit (sql/0004, the wake now once a transaction).
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
    perform pg_catalog.pg_notify('pgnet_wake', '');
    perform pg_catalog.set_config('pgnet.woken', 'yes', true);
  end if;
  return request_id;
end;
$$;
