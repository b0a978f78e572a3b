-- Lineage lookups: "which steps read / wrote this location" are JSONB
-- containment queries (inputs @> '[{"location": "..."}]'), served by GIN.
CREATE INDEX idx_steps_inputs  ON pudato_job_steps USING GIN (inputs jsonb_path_ops);
CREATE INDEX idx_steps_outputs ON pudato_job_steps USING GIN (outputs jsonb_path_ops);

-- Dead letters re-published by `dlq redrive`, by the hash of their key and
-- value: a second redrive, or a redriven message dead-lettered again, is not
-- sent twice.
CREATE TABLE pudato_dlq_redriven (
    message_sha256   TEXT PRIMARY KEY,
    kind             TEXT,
    source_topic     TEXT,
    source_partition INTEGER,
    source_offset    BIGINT,
    redriven_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
