-- pgnet 0002: indexes that keep the worker's claims and pgnet's status cheap at any queue size.

-- API: Private
-- What a claim reads: unclaimed rows, oldest due first. Rows due later (not_before in the future) sort after
-- now() and are never visited; claimed rows are not in the index at all. A fresh request is due when it was
-- enqueued, so requests go out in the order they were queued (ids break ties within one transaction).
create index http_request_queue_ready on net.http_request_queue ((coalesce(not_before, enqueued_at)), id)
  where claimed_by is null;

-- API: Private
-- The claimed rows, for finding expired leases (a worker that died) without reading the rest of the queue.
-- It indexes id, not lease_until, so renewing a lease stays a HOT update.
create index http_request_queue_claimed on net.http_request_queue (id)
  where claimed_by is not null;
