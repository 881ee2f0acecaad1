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
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- version 4 (added to an older database by chatapi/sqlite.py, see below)
    seq        INTEGER,                              -- null until the first change
    edited_at  TEXT,
    deleted_at TEXT,                                 -- a tombstone: text '' and no reactions
    reply_to   INTEGER,                              -- a message of the same chat
    reactions  TEXT                                  -- JSON cache of the reactions table
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

-- Teams (schema version 2): admins, chat kinds, members and their read
-- markers, direct chats, invite codes. chats.kind is added to a version 1
-- database by chatapi/sqlite.py (SQLite has no ADD COLUMN IF NOT EXISTS).

CREATE TABLE IF NOT EXISTS admins (
    user_id INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS members (
    chat_id      INTEGER NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         TEXT    NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'member')),
    last_read_id INTEGER NOT NULL DEFAULT 0,         -- moves forward only
    others_read  INTEGER NOT NULL DEFAULT 0,         -- others' messages at or below the marker
    PRIMARY KEY (chat_id, user_id)
);

CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, chat_id);

-- Exactly one direct chat per pair of users: the pair (lower id first) is the key.
CREATE TABLE IF NOT EXISTS direct_pairs (
    low_id  INTEGER NOT NULL REFERENCES users (id),
    high_id INTEGER NOT NULL REFERENCES users (id),
    chat_id INTEGER NOT NULL UNIQUE REFERENCES chats (id) ON DELETE CASCADE,
    PRIMARY KEY (low_id, high_id),
    CHECK (low_id < high_id)
);

CREATE TABLE IF NOT EXISTS invites (
    code       TEXT    PRIMARY KEY,
    created_by INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at TEXT    NOT NULL,                     -- ISO 8601 UTC, like created_at
    uses_left  INTEGER NOT NULL CHECK (uses_left >= 0),
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

PRAGMA user_version = 2;

-- Unread counts (schema version 3), kept by the transaction that stores a message
-- so that a member's count is one row per chat: unread = chat_counts.messages -
-- sender_counts.messages (the member's own) - members.others_read. others_read is
-- added to a version 2 database, and these tables filled, by chatapi/sqlite.py.

CREATE TABLE IF NOT EXISTS chat_counts (
    chat_id  INTEGER PRIMARY KEY REFERENCES chats (id) ON DELETE CASCADE,
    messages INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS sender_counts (
    chat_id  INTEGER NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    owner_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    messages INTEGER NOT NULL,
    PRIMARY KEY (chat_id, owner_id)
);

CREATE TRIGGER IF NOT EXISTS messages_counted AFTER INSERT ON messages
BEGIN
    INSERT INTO chat_counts (chat_id, messages) VALUES (NEW.chat_id, 1)
        ON CONFLICT (chat_id) DO UPDATE SET messages = messages + 1;
    INSERT INTO sender_counts (chat_id, owner_id, messages) VALUES (NEW.chat_id, NEW.owner_id, 1)
        ON CONFLICT (chat_id, owner_id) DO UPDATE SET messages = messages + 1;
END;

-- Nothing deletes messages yet; should something (an operator, a later feature), the
-- counts follow.
CREATE TRIGGER IF NOT EXISTS messages_uncounted AFTER DELETE ON messages
BEGIN
    UPDATE chat_counts SET messages = messages - 1 WHERE chat_id = OLD.chat_id;
    UPDATE sender_counts SET messages = messages - 1
        WHERE chat_id = OLD.chat_id AND owner_id = OLD.owner_id;
    UPDATE members SET others_read = others_read - 1
        WHERE chat_id = OLD.chat_id AND user_id != OLD.owner_id AND last_read_id >= OLD.id;
END;

PRAGMA user_version = 3;

-- Messages that change (schema version 4): `seq` is null until a message first
-- changes (it then reads as its id); every edit, delete or reaction takes a new
-- value from the message id allocation (sqlite_sequence), so "seq > N" replays
-- every change after a cursor. chatapi/sqlite.py adds the columns to an older
-- database, then creates the partial index of changed messages on (chat_id, seq).

CREATE TABLE IF NOT EXISTS reactions (
    message_id INTEGER NOT NULL REFERENCES messages (id),
    user_id    INTEGER NOT NULL REFERENCES users (id),
    emoji      TEXT    NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

PRAGMA user_version = 4;

-- Search (schema version 5): a full-text index of message texts, kept by
-- triggers in the transaction that changes a text (an edit is searchable at
-- once, a removed text no longer matches). External content: the index holds
-- only tokens; texts stay in messages. Case and diacritics are folded, and
-- prefixes of 1 to 3 characters have their own index.

CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5 (
    text,
    content = 'messages',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '1 2 3'
);

CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text);
END;

CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF text ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text);
END;

CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;

-- A database without messages has its whole index now; one with messages has
-- it built by chatapi/sqlite.py, which then writes this row in the same transaction.
INSERT OR IGNORE INTO settings (key, value)
    SELECT 'search_index', 'built' WHERE NOT EXISTS (SELECT 1 FROM messages);

PRAGMA user_version = 5;

-- API tokens (schema version 6): named, long-lived tokens for scripts and bots.
-- Only the SHA-256 of a token is stored; the token itself is shown once.
CREATE TABLE IF NOT EXISTS api_tokens (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    hash         TEXT    NOT NULL UNIQUE,            -- hex SHA-256 of the token
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_used_at TEXT                                -- updated at most once a minute
);

CREATE INDEX IF NOT EXISTS api_tokens_by_user ON api_tokens (user_id, id);

PRAGMA user_version = 6;
