-- Up Migration

-- Live readers of the log (the api's server-sent events, `fogsched events tail`) LISTEN on
-- fogsched_events. The notification only wakes them: they read the events table below the safe
-- horizon (store/log-feed.ts), so a lost or coalesced notification loses nothing. One per
-- statement with an empty payload: PostgreSQL folds equal notifications of a transaction into one,
-- so a batch append costs one notification at commit.
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('fogsched_events', '');
  RETURN NULL;
END $$;
CREATE TRIGGER events_inserted
  AFTER INSERT ON events
  FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Down Migration
DROP TRIGGER events_inserted ON events;
DROP FUNCTION events_notify();
