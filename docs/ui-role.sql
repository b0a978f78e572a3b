-- A role for `pudato-registry ui` that can only read the registry. Run once as an
-- administrator, after `pudato-registry migrate`; replace registry_ui and registry by
-- your role and database names, then give the UI PUDATO_UI_DATABASE_URL for it.
-- The UI also opens every session read-only with a statement timeout
-- (PUDATO_UI_STATEMENT_TIMEOUT_MS): this role makes that a guarantee, not a habit.
CREATE ROLE registry_ui LOGIN;                    -- add PASSWORD, or use certificates
GRANT CONNECT ON DATABASE registry TO registry_ui;
GRANT USAGE ON SCHEMA public TO registry_ui;
GRANT SELECT ON pudato_jobs, pudato_job_steps, pudato_lineage_edges TO registry_ui;
ALTER ROLE registry_ui SET default_transaction_read_only = on;
ALTER ROLE registry_ui SET statement_timeout = '5s';
-- `replay` swaps in rebuilt tables with the live tables' grants: this one comes along.
