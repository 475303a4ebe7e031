-- Append-only config history, MVCC style (like etcd's revisions):
-- every write is one row in config_versions plus one row per changed resource in
-- resource_revisions. The state of the config at version v is, per resource, its newest
-- revision at or before v; a NULL body is a deletion (a tombstone).

-- The current head version. The single row is the write lock: a write moves it from the
-- version it was based on to the next one, so versions only grow and never skip.
CREATE TABLE config_head (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT  NOT NULL
);
INSERT INTO config_head (id, version) VALUES (1, 0);

CREATE TABLE config_versions (
    version    BIGINT PRIMARY KEY,
    created_at BIGINT NOT NULL,          -- unix milliseconds
    author     TEXT   NOT NULL,
    message    TEXT,
    changes    TEXT   NOT NULL           -- JSON: [{"kind": "routes", "id": "r1", "op": "create"}]
);

CREATE TABLE resource_revisions (
    kind       TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    version    BIGINT NOT NULL REFERENCES config_versions (version),
    body       TEXT,                     -- the resource's JSON document; NULL = deleted
    created_at BIGINT NOT NULL,          -- when the resource was first created (unix ms)
    PRIMARY KEY (kind, id, version)
);
CREATE INDEX resource_revisions_by_version ON resource_revisions (version);

-- Admin API bearer tokens, stored as SHA-256 hex digests only.
CREATE TABLE admin_tokens (
    name         TEXT   PRIMARY KEY,
    token_sha256 TEXT   NOT NULL UNIQUE,
    role         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL
);
