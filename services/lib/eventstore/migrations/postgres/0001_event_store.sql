-- gradeflow event store, PostgreSQL flavour. Runs inside the service's own
-- schema (the store sets search_path on every connection).
-- Keep in step with ../sqlite/0001_event_store.sql.
--
-- JSON columns are TEXT, never jsonb: jsonb reorders keys and adds spaces,
-- and the hash chain is computed over the exact stored bytes.
-- `recorded_at` is TEXT in one fixed RFC 3339 form
-- (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), so it reads back byte for byte.

-- The log. `position` is assigned by the store's writer (no sequence, so no
-- gaps from rolled-back transactions), contiguous from 1.
CREATE TABLE events (
    position    BIGINT PRIMARY KEY,
    stream      TEXT   NOT NULL,
    version     BIGINT NOT NULL CHECK (version > 0),
    event_id    TEXT   NOT NULL UNIQUE,
    kind        TEXT   NOT NULL,
    payload     TEXT   NOT NULL,
    metadata    TEXT   NOT NULL,
    recorded_at TEXT   NOT NULL,
    prev_hash   TEXT   NOT NULL,
    hash        TEXT   NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream, version)
);

-- The chain head, one row. Every append transaction locks it
-- (SELECT … FOR UPDATE) first: that serialises writers of several processes
-- or replicas sharing this store, and makes commits visible in position order.
CREATE TABLE chain_head (
    id          SMALLINT PRIMARY KEY CHECK (id = 1),
    position    BIGINT   NOT NULL,
    hash        TEXT     NOT NULL,
    recorded_at TEXT     NOT NULL
);
INSERT INTO chain_head (id, position, hash, recorded_at)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', '');

-- Consumer idempotency: one row per handled message, with its reply.
CREATE TABLE inbox (
    consumer    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    reply       TEXT,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

-- How far each outbox relay has had its events acknowledged by JetStream.
CREATE TABLE outbox_positions (
    publisher TEXT   PRIMARY KEY,
    position  BIGINT NOT NULL
);

-- Poison messages given up on after bounded redeliveries.
CREATE TABLE dead_letters (
    consumer    TEXT   NOT NULL,
    message_id  TEXT   NOT NULL,
    subject     TEXT   NOT NULL,
    deliveries  BIGINT NOT NULL,
    reason      TEXT   NOT NULL,
    payload     TEXT   NOT NULL,
    recorded_at TEXT   NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

-- Events are immutable: row triggers refuse UPDATE and DELETE, a statement
-- trigger refuses TRUNCATE (row triggers do not fire for it).
CREATE FUNCTION events_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable (% refused)', TG_OP;
END
$$;

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_immutable();
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_immutable();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_immutable();
