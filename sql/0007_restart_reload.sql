-- pgnet 0007: net.worker_restart() reloads the server's configuration first, as pg_net's does, so that
-- `ALTER SYSTEM SET pg_net.ttl = …; select net.worker_restart();` is read by the restarted worker.

-- API: Public
-- Asks every pgnet worker serving this database to re-read its settings and reconnect, once the calling
-- transaction commits. Before that, like pg_net's, it reloads the server's configuration files (pg_reload_conf(),
-- at once, even if the transaction rolls back) where the owner of schema net may: a superuser, or a role granted
-- EXECUTE on pg_reload_conf(). A reload is a signal to the server, as cheap as pg_net's; the workers restart at
-- most once a second however often it is called. SECURITY DEFINER so that callers need no right on the table it
-- writes; revoke EXECUTE from a role to take the right to restart away.
create or replace function net.worker_restart()
  returns bool
  language plpgsql
  volatile
  security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  if pg_catalog.has_function_privilege('pg_catalog.pg_reload_conf()', 'execute') then
    perform pg_catalog.pg_reload_conf();
  end if;
  insert into net._worker_restarts default values;
  perform pg_catalog.pg_notify('pgnet_control', 'restart');
  return true;
end;
$$;

comment on function net.worker_restart() is
  'Reloads the server configuration where allowed, and makes pgnet''s workers re-read their settings and reconnect once the calling transaction commits';
