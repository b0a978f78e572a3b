-- The fold's state per entity: what the projection rules need beyond the
-- visible columns (the winning event, which event set each scalar, per-key
-- metadata writers, reference positions, the event ids already applied).
-- Stored as the fold's own compact JSON encoding (see projection.py); the worker
-- reads only the states of the entities a batch touches.

CREATE TABLE pudato_job_state (
    job_id TEXT PRIMARY KEY,
    state  TEXT NOT NULL
);

CREATE TABLE pudato_step_state (
    step_id TEXT PRIMARY KEY,
    state   TEXT NOT NULL
);
