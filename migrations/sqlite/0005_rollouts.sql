-- Staged rollouts. The policy is one row, not versioned config: changing it changes no config
-- version and streams nothing. `baseline_version`: the head when the policy was first set,
-- the version every data plane stays on until a rollout completes.
CREATE TABLE rollout_policy (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    body             TEXT   NOT NULL,
    baseline_version BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

-- One row per rollout; its id is the config version it rolls out (a version is rolled out at
-- most once, so every replica that sees the version creates the same row). Every change is a
-- conditional UPDATE on (id, state, stage): replicas driving the same rollout agree.
CREATE TABLE rollouts (
    id               BIGINT PRIMARY KEY,
    previous_version BIGINT NOT NULL,
    state            TEXT   NOT NULL,  -- in_progress, completed, halted, aborted
    stage            BIGINT NOT NULL,
    policy           TEXT   NOT NULL,  -- the policy as it stood when the rollout started
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    stage_started_at BIGINT NOT NULL,
    halt_reason      TEXT,
    base_requests    BIGINT NOT NULL,  -- the fleet's requests on previous_version at the start
    base_errors_5xx  BIGINT NOT NULL
);
