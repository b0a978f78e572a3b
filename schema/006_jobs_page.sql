-- The UI's jobs page: newest first within a pipeline or a status, whatever the
-- pipeline's age (a pipeline whose runs are all a year old is found on its own
-- index, not by walking every newer job), and its text filter.
-- status included: the counts by status read the index alone.
CREATE INDEX idx_jobs_pipeline_created ON pudato_jobs (pipeline, created_at) INCLUDE (status);
CREATE INDEX idx_jobs_status_created ON pudato_jobs (status, created_at);
-- The counts by status of the newest jobs, with no pipeline filter, from the index alone.
CREATE INDEX idx_jobs_created_status ON pudato_jobs (created_at) INCLUDE (status);

-- The UI's jobs filter `text` finds a job by any part of its id, pipeline,
-- dag_run_id or error (ILIKE). A trigram index on the four together answers it
-- where pg_trgm can be had (as migration 004 asks for it); without one the filter
-- scans the jobs, newest first, bounded by the UI's statement timeout.
DO $$
DECLARE
    trgm_schema TEXT;
BEGIN
    SELECT extnamespace::regnamespace::text INTO trgm_schema
      FROM pg_extension WHERE extname = 'pg_trgm';
    IF trgm_schema IS NOT NULL THEN
        EXECUTE format('CREATE INDEX idx_jobs_text ON pudato_jobs USING gin (('
                       'job_id || '' '' || coalesce(pipeline, '''') || '' '' ||'
                       ' coalesce(dag_run_id, '''') || '' '' || coalesce(error, ''''))'
                       ' %s.gin_trgm_ops)', trgm_schema);
    END IF;
END
$$;
