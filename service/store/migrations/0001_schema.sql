-- The shared store's schema: jobs and their events, uploads, adapter versions and aliases.
-- Names and aliases are "tenant/name"; times are seconds since the epoch, as in the Job model.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    spec JSONB NOT NULL,
    spec_digest TEXT NOT NULL,
    request_id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    result JSONB NOT NULL DEFAULT '{}',
    error_reason TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    worker_pid INTEGER,
    worker_started DOUBLE PRECISION,
    last_event INTEGER NOT NULL DEFAULT 0  -- the seq of the job's latest event
);
CREATE UNIQUE INDEX jobs_request ON jobs (tenant, request_id) WHERE request_id <> '';
CREATE INDEX jobs_queue ON jobs (state, priority, seq);
CREATE INDEX jobs_tenant_queue ON jobs (tenant, state, priority, seq);

CREATE TABLE job_events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    seq INTEGER NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    data JSONB NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    stored BIGINT NOT NULL,
    files INTEGER NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE INDEX uploads_tenant ON uploads (tenant);

CREATE TABLE adapter_names (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL);
CREATE TABLE adapters (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    rank INTEGER NOT NULL,
    base_model TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    pinned BOOLEAN NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE aliases (alias TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL);
