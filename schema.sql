-- The one schema of ChatAPI. Applied at every start; every statement is
-- idempotent. PRAGMA user_version records the version so that a later release
-- can migrate an existing database (see chatapi/db.py: SCHEMA_VERSION).

CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    email         TEXT    NOT NULL UNIQUE,           -- stored lower-cased
    username      TEXT    NOT NULL,
    username_key  TEXT    NOT NULL UNIQUE,           -- casefolded: unique case-insensitively
    password_hash TEXT    NOT NULL,                  -- bcrypt
    token_version INTEGER NOT NULL DEFAULT 0,        -- bumped by logout: revokes older tokens
    is_online     INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS chats (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    owner_id   INTEGER NOT NULL REFERENCES users (id),
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- AUTOINCREMENT: message ids are never reused, so "after id N" is a cursor
-- that stays valid for the life of the database.
CREATE TABLE IF NOT EXISTS messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id    INTEGER NOT NULL REFERENCES chats (id),
    owner_id   INTEGER NOT NULL REFERENCES users (id),
    text       TEXT    NOT NULL,
    nonce      TEXT,                                 -- client-chosen, makes a send idempotent
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX IF NOT EXISTS messages_by_chat ON messages (chat_id, id);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_nonce ON messages (owner_id, nonce)
    WHERE nonce IS NOT NULL;

-- Server-wide settings kept with the data, e.g. the generated token secret.
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

PRAGMA user_version = 1;
