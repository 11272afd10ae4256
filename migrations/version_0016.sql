-- Cost and budgets.
--
-- A step of a tool that declares `cost_per_call` (a built-in in PAO_TOOL_COSTS, an MCP tool in
-- the tools file, a task type) is charged before it starts; a remote step's reported `cost`
-- replaces its declared one when it completes. Money is `numeric`, never a float.
--
-- What an agent spent is counted per window (its hour, day and month, in its zone) in
-- `agent_spending`, so every API replica, scheduler and worker sees one figure; changes to an
-- agent's windows are serialised by a transaction-level advisory lock on the agent
-- (pao/budgets.py), so two workers never both spend its last unit.

-- What a run's steps were charged; NULL: nothing (a run of free steps costs no write).
ALTER TABLE runs ADD COLUMN cost numeric;
ALTER TABLE runs ADD CONSTRAINT runs_cost_nonnegative CHECK (cost IS NULL OR cost >= 0);

-- A task's ceiling for one run, and the sum of its steps' declared costs when it was written
-- (what admission reserves against the owner's day and month budgets).
ALTER TABLE tasks ADD COLUMN budget_per_run numeric;
ALTER TABLE tasks ADD COLUMN cost_estimate numeric NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD CONSTRAINT tasks_budget_per_run_nonnegative CHECK (
    budget_per_run IS NULL OR budget_per_run >= 0
);
ALTER TABLE tasks ADD CONSTRAINT tasks_cost_estimate_nonnegative CHECK (cost_estimate >= 0);

-- An agent's budgets (NULL: none), set by an admin, and the zone its days and months are
-- counted in (NULL: PAO_DEFAULT_TIMEZONE).
ALTER TABLE agents ADD COLUMN budget_per_day numeric;
ALTER TABLE agents ADD COLUMN budget_per_month numeric;
ALTER TABLE agents ADD COLUMN max_runs_per_hour integer;
ALTER TABLE agents ADD COLUMN timezone text;
ALTER TABLE agents ADD CONSTRAINT agents_budget_per_day_nonnegative CHECK (
    budget_per_day IS NULL OR budget_per_day >= 0
);
ALTER TABLE agents ADD CONSTRAINT agents_budget_per_month_nonnegative CHECK (
    budget_per_month IS NULL OR budget_per_month >= 0
);
ALTER TABLE agents ADD CONSTRAINT agents_max_runs_per_hour_nonnegative CHECK (
    max_runs_per_hour IS NULL OR max_runs_per_hour >= 0
);
ALTER TABLE agents ADD CONSTRAINT agents_timezone_length CHECK (
    timezone IS NULL OR char_length(timezone) BETWEEN 1 AND 64
);

-- What an admitted occurrence reserved of its owner's day and month budgets and has not spent
-- yet (its steps consume it as they are charged). Only live occurrences hold a reservation:
-- one that ends gives the rest back by ending, with nothing to release.
ALTER TABLE due_work ADD COLUMN reserved numeric;
ALTER TABLE due_work ADD COLUMN reserved_by uuid;
ALTER TABLE due_work ADD CONSTRAINT due_work_reserved_nonnegative CHECK (
    reserved IS NULL OR reserved >= 0
);
CREATE INDEX due_work_reserved_idx ON due_work (reserved_by)
    WHERE reserved > 0 AND state IN ('queued', 'running', 'waiting');

-- One agent's spending and admitted runs in one window of its zone: an hour (runs, for
-- max_runs_per_hour), a day or a month (cost). Rows exist only for agents that spent or are
-- limited; old ones are pruned with the run history.
CREATE TABLE agent_spending (
    agent_id   uuid NOT NULL,
    period     text NOT NULL,
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL,
    spent      numeric NOT NULL DEFAULT 0,
    runs       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, period, starts_at),
    CONSTRAINT agent_spending_period_known CHECK (period IN ('hour', 'day', 'month')),
    CONSTRAINT agent_spending_window CHECK (ends_at > starts_at),
    CONSTRAINT agent_spending_spent_nonnegative CHECK (spent >= 0),
    CONSTRAINT agent_spending_runs_nonnegative CHECK (runs >= 0)
);
CREATE INDEX agent_spending_ends_idx ON agent_spending (ends_at);

-- Two new decisions: an occurrence refused because its owner's budget is spent, or because
-- its owner has started max_runs_per_hour runs this hour.
ALTER TABLE occurrences DROP CONSTRAINT occurrences_decision_known;
ALTER TABLE occurrences ADD CONSTRAINT occurrences_decision_known CHECK (
    decision IN (
        'queued', 'coalesced', 'skipped_paused', 'snoozed', 'missed', 'deduplicated',
        'cancelled', 'hop_limit', 'over_quota', 'over_budget', 'rate_limited'
    )
);
