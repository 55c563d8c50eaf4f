-- Captured traffic: each tenant's capture policies (per adapter name or alias), and the
-- captures they sampled, redacted, with the owner's feedback in the same row.
CREATE TABLE capture_policies (
    tenant TEXT NOT NULL,
    target TEXT NOT NULL,
    rate DOUBLE PRECISION NOT NULL,
    retention_seconds DOUBLE PRECISION NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    schema JSONB,  -- the JSON Schema captured answers are checked against; NULL: none
    PRIMARY KEY (tenant, target)
);
CREATE TABLE captures (
    id TEXT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    tenant TEXT NOT NULL,
    target TEXT NOT NULL,
    adapter_version TEXT NOT NULL,
    request JSONB NOT NULL,
    answer TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_seconds DOUBLE PRECISION NOT NULL,
    redacted JSONB NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    rating INTEGER,
    flagged BOOLEAN NOT NULL DEFAULT FALSE,
    flag_reason TEXT NOT NULL DEFAULT '',
    correction TEXT,
    rated DOUBLE PRECISION  -- when the feedback came; NULL: none yet
);
CREATE INDEX captures_tenant ON captures (tenant, target, seq);
CREATE INDEX captures_expires ON captures (expires);
