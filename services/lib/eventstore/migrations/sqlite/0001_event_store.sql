-- gradeflow event store, SQLite flavour (the embedded default).
-- Keep in step with ../postgres/0001_event_store.sql: same tables, same
-- columns, same trigger names, so one conformance suite covers both.
--
-- Every JSON column is TEXT holding the exact canonical bytes that were
-- hashed; `recorded_at` is TEXT in one fixed RFC 3339 form
-- (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), so it reads back byte for byte and sorts
-- chronologically.

-- The log. `position` is assigned by the store's single writer (never
-- autoincrement), contiguous from 1; `(stream, version)` unique is the
-- optimistic-concurrency guard; `event_id` unique makes re-appends idempotent.
CREATE TABLE events (
    position    INTEGER PRIMARY KEY,
    stream      TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version > 0),
    event_id    TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    metadata    TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream, version)
) STRICT;

-- The chain head, one row: last position, its hash and its recorded_at.
-- Updated in the same transaction as every append, and read at the start of
-- each batch so that a writer in another process is noticed.
CREATE TABLE chain_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    position    INTEGER NOT NULL,
    hash        TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL
) STRICT;
INSERT INTO chain_head (id, position, hash, recorded_at)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', '');

-- Consumer idempotency: one row per handled message, with the reply to give
-- to a redelivery.
CREATE TABLE inbox (
    consumer    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    reply       TEXT,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
) STRICT;

-- How far each outbox relay has had its events acknowledged by JetStream.
CREATE TABLE outbox_positions (
    publisher TEXT    PRIMARY KEY,
    position  INTEGER NOT NULL
) STRICT;

-- Poison messages given up on after bounded redeliveries.
CREATE TABLE dead_letters (
    consumer    TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    deliveries  INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL,
    PRIMARY KEY (consumer, message_id)
) STRICT;

-- Events are immutable. Tampering below SQL is caught by verify().
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable');
END;
