-- Assets in pipelines: which step made an asset, and which assets a remote step takes.
--
-- A step that saves a file (http.request's `save_body`, an MCP tool's image) records its id on
-- the asset, so a run lists its assets by step. A remote step's `input_assets` are the assets
-- named by the `format: asset` fields of its parameters, checked when it was offered (each one
-- its task's owner may use): while an agent holds a claim on the step, it may read them
-- (pao.assets), and nothing else of the owner's.
ALTER TABLE assets ADD COLUMN step_id text;
ALTER TABLE assets ADD CONSTRAINT assets_step_id_length CHECK (char_length(step_id) <= 64);

ALTER TABLE remote_steps ADD COLUMN input_assets uuid[] NOT NULL DEFAULT '{}';
ALTER TABLE remote_steps ADD CONSTRAINT remote_steps_input_assets_count CHECK (
    cardinality(input_assets) <= 1000
);
-- A claimer reading an asset: the steps it holds now.
CREATE INDEX remote_steps_holder_idx ON remote_steps (holder_agent_id) WHERE state = 'claimed';
