-- A least-privilege role for the long-lived worker. Run once as an administrator,
-- after `pudato-registry migrate` (which a role allowed DDL runs, as a one-shot job).
-- Replace registry_worker and registry by your role and database names.
CREATE ROLE registry_worker LOGIN;                -- add PASSWORD, or use certificates
GRANT CONNECT, TEMPORARY ON DATABASE registry TO registry_worker;  -- TEMP: its staging tables
GRANT USAGE ON SCHEMA public TO registry_worker;
GRANT SELECT, INSERT, UPDATE
  ON pudato_jobs, pudato_job_steps, pudato_job_state, pudato_step_state
  TO registry_worker;
-- The lineage graph: an edge no step contributes to any more is deleted.
GRANT SELECT, INSERT, UPDATE, DELETE ON pudato_lineage_edges TO registry_worker;
-- Readers (dashboards, `jobs`, `lineage`) need only SELECT on pudato_jobs, pudato_job_steps
-- and pudato_lineage_edges.
-- `replay` copies these grants to the tables it swaps in.
