-- A rollout's cohort, recorded when each stage starts: the node ids on the new version (a JSON
-- array), so that a data plane joining mid-stage stays on the previous version until the last
-- (100%) stage and a canary that restarts keeps its place. NULL for rollouts started before
-- this column existed: their cohort is recomputed from the connected fleet, as it was then.
ALTER TABLE rollouts ADD COLUMN cohort TEXT;
