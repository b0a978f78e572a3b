-- Lineage asks one question: which steps read or wrote any of these locations.
-- A GIN index over each list's locations alone answers it for a whole hop in one
-- index scan (`?|`, any of an array), where the containment indexes of 003 took one
-- scan per location; and it indexes only the locations, not every member of every
-- reference, so writes maintain less.
DROP INDEX IF EXISTS idx_steps_inputs;
DROP INDEX IF EXISTS idx_steps_outputs;
CREATE INDEX idx_steps_input_locations
    ON pudato_job_steps USING GIN (jsonb_path_query_array(inputs, '$[*].location'));
CREATE INDEX idx_steps_output_locations
    ON pudato_job_steps USING GIN (jsonb_path_query_array(outputs, '$[*].location'));
