-- Which store this is: data planes compare version numbers only within one store, so a
-- control plane moved to another store can hand them a lower version on purpose, while a
-- replica that is merely behind cannot.
CREATE TABLE store_identity (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    store_id TEXT    NOT NULL
);
INSERT INTO store_identity (id, store_id) VALUES (1, replace(gen_random_uuid()::text, '-', ''));

-- The data-plane fleet as every control-plane replica sees it. One row per data-plane
-- process (node id + a random instance id per process start); the replica that holds the
-- process's config stream writes its row. Times are unix milliseconds; booleans are 0/1.
CREATE TABLE data_planes (
    node_id          TEXT   NOT NULL,
    instance_id      TEXT   NOT NULL,
    stream_id        TEXT   NOT NULL,  -- the current stream: an older stream cannot overwrite
    address          TEXT,
    build_version    TEXT   NOT NULL,
    control_plane_id TEXT   NOT NULL,  -- the replica holding (or last holding) its stream
    cp_instance      TEXT   NOT NULL,  -- that replica's process: it refreshes last_seen
    connected        BIGINT NOT NULL,
    connected_at     BIGINT NOT NULL,
    last_seen        BIGINT NOT NULL,  -- refreshed by its replica while the stream is open
    applied_version  BIGINT,
    config_source    TEXT,             -- 'stream' or 'cache'
    rejected_version BIGINT,
    rejected_error   TEXT,
    rejected_at      BIGINT,
    PRIMARY KEY (node_id, instance_id)
);
CREATE INDEX data_planes_by_replica ON data_planes (cp_instance);
