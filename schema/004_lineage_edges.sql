-- Amendment 3: the logical lineage graph, one row per (location, direction,
-- namespace, environment, pipeline, step_name), kept by the worker in the
-- transaction of every batch.
--
-- Those six columns are the key. They are not a btree primary key because a
-- valid event can make them too long for one: a location may have 4,096
-- characters and each name 512, up to 24 KiB of UTF-8, against PostgreSQL's
-- 2,704 bytes per index entry. The primary key is instead edge_key, the
-- SHA-256 of the six, each prefixed by its length (so no two keys share a
-- text); step_key is the same of the step's four (namespace, environment,
-- pipeline, step_name), for walks from a step to its other locations. The
-- worker computes both with the same expression (store.edge_key_sql).
CREATE TABLE pudato_lineage_edges (
    edge_key     BYTEA PRIMARY KEY,
    step_key     BYTEA NOT NULL,
    location     TEXT NOT NULL,
    direction    TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    namespace    TEXT NOT NULL,
    environment  TEXT NOT NULL,
    pipeline     TEXT NOT NULL,
    step_name    TEXT NOT NULL,
    runs         BIGINT NOT NULL,
    first_seen   TIMESTAMPTZ NOT NULL,
    last_seen    TIMESTAMPTZ NOT NULL,
    last_step_id TEXT NOT NULL,
    last_job_id  TEXT NOT NULL,
    last_status  TEXT NOT NULL,
    ref_type     TEXT NOT NULL
);

-- "What reads and writes this location": equality on a text of any length.
CREATE INDEX idx_lineage_edges_location ON pudato_lineage_edges USING hash (location);
CREATE INDEX idx_lineage_edges_step ON pudato_lineage_edges (step_key, direction);
CREATE INDEX idx_lineage_edges_namespace ON pudato_lineage_edges (namespace, environment);

-- `lineage --search TEXT` finds locations containing TEXT through a trigram
-- index where the pg_trgm extension can be had (PostgreSQL's contrib, on
-- every managed service); without it the search scans the edges, bounded.
DO $$
DECLARE
    trgm_schema TEXT;
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm is not available (%): lineage --search scans', SQLERRM;
    END;
    SELECT extnamespace::regnamespace::text INTO trgm_schema
      FROM pg_extension WHERE extname = 'pg_trgm';
    IF trgm_schema IS NOT NULL THEN
        EXECUTE format('CREATE INDEX idx_lineage_edges_search ON pudato_lineage_edges'
                       ' USING gin (location %s.gin_trgm_ops)', trgm_schema);
    END IF;
END
$$;

-- A registry upgraded in place: the edges of the rows it already has.
INSERT INTO pudato_lineage_edges
WITH refs AS (
    SELECT DISTINCT ON (s.step_id, d.direction, r.entry->>'location')
           r.entry->>'location' AS location, d.direction, j.namespace, j.environment,
           j.pipeline, s.step_name, coalesce(s.started_at, s.completed_at) AS seen,
           s.step_id, s.job_id, s.status, r.entry->>'ref_type' AS ref_type
      FROM pudato_job_steps s
      JOIN pudato_jobs j ON j.job_id = s.job_id
     CROSS JOIN LATERAL (VALUES ('in', s.inputs), ('out', s.outputs)) AS d(direction, refs)
     CROSS JOIN LATERAL jsonb_array_elements(d.refs) WITH ORDINALITY AS r(entry, n)
     WHERE j.pipeline IS NOT NULL AND s.step_name IS NOT NULL
       AND coalesce(s.started_at, s.completed_at) IS NOT NULL
     ORDER BY s.step_id, d.direction, r.entry->>'location', r.n
), edges AS (
    SELECT DISTINCT ON (location, direction, namespace, environment, pipeline, step_name)
           location, direction, namespace, environment, pipeline, step_name,
           count(*) OVER w AS runs, min(seen) OVER w AS first_seen, seen AS last_seen,
           step_id AS last_step_id, job_id AS last_job_id, status AS last_status, ref_type
      FROM refs
    WINDOW w AS (PARTITION BY location, direction, namespace, environment, pipeline, step_name)
     ORDER BY location, direction, namespace, environment, pipeline, step_name,
              seen DESC, step_id COLLATE "C" DESC
)
SELECT sha256(convert_to(concat(length(location), ':', location, length(direction), ':',
           direction, length(namespace), ':', namespace, length(environment), ':',
           environment, length(pipeline), ':', pipeline, length(step_name), ':', step_name),
           'UTF8')),
       sha256(convert_to(concat(length(namespace), ':', namespace, length(environment), ':',
           environment, length(pipeline), ':', pipeline, length(step_name), ':', step_name),
           'UTF8')),
       location, direction, namespace, environment, pipeline, step_name, runs, first_seen,
       last_seen, last_step_id, last_job_id, last_status, ref_type
  FROM edges;
