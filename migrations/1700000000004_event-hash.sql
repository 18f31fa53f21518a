-- Up Migration

-- Tamper evidence: every event stores a SHA-256 over its content and the hash of the
-- previous event of its stream. One chain per stream (no global serialization point:
-- concurrent writers of different streams never wait on each other). Changing or removing
-- an event breaks its stream's chain at that event or its successor (cutting off a
-- stream's last events, or rewriting a stream's tail with fresh hashes, takes an anchor
-- kept outside the table to notice); `fogsched audit verify` (src/audit/hash-chain.ts) walks the chains with the same
-- function as the trigger below, so the two cannot drift apart.
--
-- hash = sha256(prev || convert_to(json_build_array(
--          stream_id, stream_type, stream_version, event_id::text, type, schema_version,
--          recorded_at in whole microseconds since 1970-01-01 00:00 UTC, data, metadata
--        )::text, 'UTF8'))
-- prev = the hash of (stream_id, stream_version - 1), or 32 zero bytes for the first event.
-- The JSON array escapes every string, so no field can bleed into the next; data and
-- metadata go in as jsonb's text form, which is canonical for a given value (keys sorted,
-- duplicates dropped, fixed spacing). For these argument types the text is the same as
-- jsonb_build_array's; json_build_array gets there without re-parsing data and metadata
-- (about 1 µs a row less).
-- Nothing depends on session settings (TimeZone, DateStyle, extra_float_digits) or on
-- the database encoding. `position` and `transaction_id` are left out on purpose: the chain
-- vouches for each stream's content and order, and survives a copy of the log into
-- another database.
ALTER TABLE events ADD COLUMN hash bytea;

-- STABLE rather than IMMUTABLE because json_build_array, convert_to and extract are
-- STABLE: that lets PostgreSQL inline this body into its callers (the trigger, the
-- verifier's query) instead of running a SQL function per row. Not STRICT: prev is NULL
-- for the first event of a stream.
CREATE FUNCTION event_hash(
  prev bytea,
  stream_id text,
  stream_type text,
  stream_version integer,
  event_id uuid,
  type text,
  schema_version smallint,
  data jsonb,
  metadata jsonb,
  recorded_at timestamptz
) RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT sha256(
    coalesce(prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
    || convert_to(json_build_array(
         stream_id, stream_type, stream_version, event_id::text, type, schema_version,
         (extract(epoch FROM recorded_at) * 1000000)::bigint, data, metadata
       )::text, 'UTF8'))
$$;

-- One index lookup on events_stream_version_key per row. A BEFORE ROW trigger in a
-- volatile (plpgsql) function sees the rows its own statement inserted before this one,
-- so one INSERT may carry versions v, v+1, ... of a stream in version order.
-- A missing predecessor (an append that would leave a gap) is refused: with contiguous
-- versions every gap the verifier finds is a removed event.
CREATE FUNCTION events_chain_hash() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  prev bytea;
BEGIN
  IF NEW.stream_version > 1 THEN
    SELECT e.hash INTO prev FROM events e
     WHERE e.stream_id = NEW.stream_id AND e.stream_version = NEW.stream_version - 1;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'events: stream % has no version %, so version % cannot be appended',
        NEW.stream_id, NEW.stream_version - 1, NEW.stream_version
        USING ERRCODE = 'foreign_key_violation';
    END IF;
  END IF;
  NEW.hash := event_hash(prev, NEW.stream_id, NEW.stream_type, NEW.stream_version, NEW.event_id,
                         NEW.type, NEW.schema_version, NEW.data, NEW.metadata, NEW.recorded_at);
  RETURN NEW;
END $$;

-- Backfill the events written before this migration, stream by stream in version order
-- (a recursive walk: each step hashes the next event of every stream at once). Streams
-- are chained through any gap they already have, so the verifier reports the gap rather
-- than a hash it cannot reproduce. The append-only trigger is disabled for this one
-- UPDATE only, inside the migration's transaction; ADD COLUMN above already holds the
-- ACCESS EXCLUSIVE lock, so no writer sees the table without its triggers.
ALTER TABLE events DISABLE TRIGGER events_append_only;
WITH RECURSIVE chain AS (
  SELECT e.position, e.stream_id, e.stream_version,
         event_hash(NULL, e.stream_id, e.stream_type, e.stream_version, e.event_id, e.type,
                    e.schema_version, e.data, e.metadata, e.recorded_at) AS hash
    FROM (SELECT DISTINCT ON (stream_id) * FROM events ORDER BY stream_id, stream_version) e
  UNION ALL
  SELECT n.position, n.stream_id, n.stream_version,
         event_hash(c.hash, n.stream_id, n.stream_type, n.stream_version, n.event_id, n.type,
                    n.schema_version, n.data, n.metadata, n.recorded_at)
    FROM chain c
    CROSS JOIN LATERAL (
      SELECT * FROM events e
       WHERE e.stream_id = c.stream_id AND e.stream_version > c.stream_version
       ORDER BY e.stream_version LIMIT 1
    ) n
)
UPDATE events SET hash = chain.hash FROM chain WHERE events.position = chain.position;
ALTER TABLE events ENABLE TRIGGER events_append_only;

ALTER TABLE events ALTER COLUMN hash SET NOT NULL;

-- Named to sort last: BEFORE triggers fire in name order, and the hash must cover the
-- row as it is finally stored.
CREATE TRIGGER events_zz_chain_hash
  BEFORE INSERT ON events
  FOR EACH ROW EXECUTE FUNCTION events_chain_hash();

-- Down Migration
DROP TRIGGER events_zz_chain_hash ON events;
DROP FUNCTION events_chain_hash();
DROP FUNCTION event_hash(bytea, text, text, integer, uuid, text, smallint, jsonb, jsonb, timestamptz);
ALTER TABLE events DROP COLUMN hash;
