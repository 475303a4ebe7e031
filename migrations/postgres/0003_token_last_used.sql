-- When each admin token last authenticated a call (unix ms; NULL: never). Written at most
-- once a minute per token and replica, so reads of the admin API stay reads.
ALTER TABLE admin_tokens ADD COLUMN last_used_at BIGINT;
