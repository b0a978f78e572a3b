-- `jobs diff`: the run of a pipeline (in one environment and namespace) just
-- before another, and its last successful runs for the step baselines, are
-- a walk back in time on this index, whatever the pipeline's history.
CREATE INDEX idx_jobs_pipeline_scope_created
    ON pudato_jobs (pipeline, environment, namespace, created_at);
