-- Claims are leased and fenced: the owner of a job, the claim's fencing number, when its lease
-- runs out, and whether a client asked the owner to cancel. A job a server was running before
-- this migration gets a lease that has run out: the first sweep requeues it.
ALTER TABLE jobs
    ADD COLUMN owner TEXT NOT NULL DEFAULT '',
    ADD COLUMN fence INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN lease_until DOUBLE PRECISION,
    ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE jobs SET owner = 'a server before leases', lease_until = 0
    WHERE state IN ('validating', 'running', 'evaluating');
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE owner <> '';
