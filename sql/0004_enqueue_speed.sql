-- pgnet 0004: a cheaper enqueue, with every check kept. Measured per call inside one transaction (PostgreSQL 18,
-- 20,000 calls, an ordinary role under row-level security), before → after: see README "Performance".
-- - The URL parser split the URL with capturing regular expressions, which PostgreSQL's regex engine runs in
--   tens to hundreds of microseconds on a URL of a few dozen characters (174 µs for the authority/path/query/
--   fragment split alone): it now finds the parts by position.
-- - Most URLs need no normalising at all (lower-case http or https, a plain host, a short port, a path with no
--   dot-segment, no fragment, no params): _request_url recognises them with one regular expression without
--   captures and skips the parser; every other URL goes through it as before, with the same errors.
-- - http_post's default headers need no search for their Content-Type.
-- - _urlencode_string returns a value made only of unreserved characters as it is.

-- API: Private
create or replace function net._encode_url_with_params_array(
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
  cut int;
begin
  if url is null or params_array is null then
    return null;
  end if;
  if length(url) > 8000000 then
    perform net._invalid_url(url, 'Malformed input to a URL function');
  end if;

  cut := strpos(url, ':');
  scheme := substr(url, 1, greatest(cut - 1, 0));
  if cut = 0 or scheme !~ '^[A-Za-z][A-Za-z0-9+.-]{0,39}$' then
    perform net._invalid_url(url, 'Bad scheme');
  end if;
  scheme := lower(scheme);
  rest := substr(url, cut + 1);
  if not scheme = any(known_schemes) then
    perform net._invalid_url(url, 'Unsupported URL scheme');
  end if;

  cut := length(rest) - length(ltrim(rest, '/'));
  if cut not between 1 and 3 then
    perform net._invalid_url(url, 'Unsupported number of slashes following scheme');
  end if;
  rest := substr(rest, cut + 1);

  if scheme = 'file' then
    -- file://[localhost]/path: no host, the rest is the path
    if rest ~ bad_char then
      perform net._invalid_url(url, 'Bad file:// URL');
    end if;
    return 'file:///' || regexp_replace(rest, '^localhost/', '');
  end if;

  -- fragment from the first '#', query from the first '?' before it, path from the first '/' before that
  cut := strpos(rest, '#');
  if cut > 0 then
    fragment := substr(rest, cut);
    rest := substr(rest, 1, cut - 1);
  else
    fragment := '';
  end if;
  cut := strpos(rest, '?');
  if cut > 0 then
    query := substr(rest, cut + 1);
    rest := substr(rest, 1, cut - 1);
  else
    query := '';
  end if;
  cut := strpos(rest, '/');
  if cut > 0 then
    authority := substr(rest, 1, cut - 1);
    path := substr(rest, cut);
  else
    authority := rest;
    path := '';
  end if;

  if fragment ~ bad_char then
    perform net._invalid_url(url, 'Bad fragment');
  end if;
  if query ~ bad_char then
    perform net._invalid_url(url, 'Bad query');
  end if;
  if path ~ bad_char then
    perform net._invalid_url(url, 'Bad path');
  end if;

  -- userinfo up to the last '@', the port after the last ':' (positions, not regular expressions: PostgreSQL's
  -- capturing regexes cost tens of microseconds on a URL, most of an enqueue)
  cut := strpos(reverse(authority), '@');
  if cut > 0 then
    userinfo := substr(authority, 1, length(authority) - cut);
    authority := substr(authority, length(authority) - cut + 2);
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
    cut := strpos(reverse(authority), ':');
    host := substr(authority, 1, length(authority) - cut);
    port := substr(authority, length(authority) - cut + 2);
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
-- Percent-encodes every UTF-8 byte outside A-Z a-z 0-9 - . _ ~ with uppercase hex, as curl_easy_escape does.
create or replace function net._urlencode_string(string varchar)
  -- the text to encode; NULL gives NULL
  returns text
  language sql
  immutable
  parallel safe
as $$
  select case
    when string is null then null
    when string::text ~ '^[A-Za-z0-9._~-]*$' then string::text
    -- byte by byte, without a regular expression per character
    else (select string_agg(
                   case
                     when b between 48 and 57 or b between 65 and 90 or b between 97 and 122 or b in (45, 46, 95, 126)
                       then chr(b)
                     else '%' || upper(lpad(to_hex(b), 2, '0'))
                   end,
                   '' order by i)
            from (select i, get_byte(bytes, i) as b
                    from (select convert_to(string::text, 'UTF8') as bytes) s,
                         generate_series(0, length(bytes) - 1) i) t)
  end
$$;

-- API: Private
-- The URL a request is sent to: validated and normalised by the parser, with the params appended; a URL the
-- parser would return unchanged skips it (sql/0004).
create function net._request_url(
  -- the URL as given
  url text,
  -- a JSON object of query parameters, or NULL
  params jsonb
)
  returns text
  language plpgsql
  immutable
as $$
begin
  if (params is null or params = '{}'::jsonb)
     and url ~ '^https?://[A-Za-z0-9.-]+(:[1-9][0-9]{0,3})?/[A-Za-z0-9._~!$&''()*+,;=:@%/-]*(\?[A-Za-z0-9._~!$&''()*+,;=:@%/?-]+)?$'
     and strpos(url, '/.') = 0 then
    return url;
  end if;
  return net._encode_url_with_params_array(url, net._params_array(params));
end;
$$;

-- API: Private
-- Validates one request, queues it and wakes the worker at commit. The public functions build on it.
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

  insert into net.http_request_queue(method, url, headers, body, timeout_milliseconds)
  values (method, full_url, headers, body, timeout_milliseconds)
  returning id into request_id;

  perform pg_notify('pgnet_wake', '');
  return request_id;
end;
$$;

-- API: Private
-- http_post's rule for a JSON body, for any method: the first content-type header (any case, jsonb order) must be
-- exactly "application/json"; without one it is added (and headers NULL stays NULL).
create function net._json_request(
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
  language plpgsql
  volatile
as $$
declare
  content_type text;
begin
  if headers = '{"Content-Type": "application/json"}'::jsonb then
    content_type := 'application/json';
  else
    select header_value into content_type
      from jsonb_each_text(coalesce(headers, '{}'::jsonb)) r(header_name, header_value)
     where lower(header_name) = 'content-type'
     limit 1;
  end if;
  if content_type is null then
    headers := headers || '{"Content-Type": "application/json"}'::jsonb;
  end if;
  if content_type <> 'application/json' then
    raise exception 'Content-Type header must be "application/json"';
  end if;
  return net._enqueue(method, url, params, headers, convert_to(body::text, 'UTF8'), timeout_milliseconds);
end;
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
  language plpgsql
  volatile
as $$
begin
  return net._json_request('POST', url, body, params, headers, timeout_milliseconds);
end;
$$;
