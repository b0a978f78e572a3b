-- The two projection tables, as registry-schema.md lists them.
-- Nullability follows events-v1.md: any event may arrive first, so pipeline,
-- logic_version, step_name, handler_type and action are nullable here even
-- though the upstream pudato DDL declares them NOT NULL.

CREATE TABLE pudato_jobs (
    job_id        TEXT PRIMARY KEY,
    pipeline      TEXT,
    environment   TEXT NOT NULL DEFAULT 'dev',
    namespace     TEXT NOT NULL DEFAULT 'default',
    status        TEXT NOT NULL DEFAULT 'pending',
    logic_version TEXT,
    request       JSONB NOT NULL DEFAULT '{}',
    parameters    JSONB NOT NULL DEFAULT '{}',
    dag_run_id    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    started_at    TIMESTAMPTZ,
    completed_at  TIMESTAMPTZ,
    error         TEXT,
    metadata      JSONB NOT NULL DEFAULT '{}'
);

CREATE INDEX idx_jobs_pipeline    ON pudato_jobs (pipeline);
CREATE INDEX idx_jobs_environment ON pudato_jobs (environment);
CREATE INDEX idx_jobs_namespace   ON pudato_jobs (namespace);
CREATE INDEX idx_jobs_status      ON pudato_jobs (status);
CREATE INDEX idx_jobs_created_at  ON pudato_jobs (created_at);

CREATE TABLE pudato_job_steps (
    step_id        TEXT PRIMARY KEY,
    job_id         TEXT NOT NULL REFERENCES pudato_jobs (job_id) ON DELETE CASCADE,
    step_name      TEXT,
    handler_type   TEXT,
    action         TEXT,
    status         TEXT NOT NULL DEFAULT 'pending',
    correlation_id TEXT NOT NULL,
    inputs         JSONB NOT NULL DEFAULT '[]',
    outputs        JSONB NOT NULL DEFAULT '[]',
    executions     JSONB NOT NULL DEFAULT '[]',
    started_at     TIMESTAMPTZ,
    completed_at   TIMESTAMPTZ,
    duration_ms    INTEGER,
    error          TEXT,
    metadata       JSONB NOT NULL DEFAULT '{}'
);

CREATE INDEX idx_steps_job_id     ON pudato_job_steps (job_id);
CREATE INDEX idx_steps_status     ON pudato_job_steps (status);
CREATE INDEX idx_steps_started_at ON pudato_job_steps (started_at);
