-- hitl-mcp's PostgreSQL store, schema 4: standing approvals (hitl_mcp.grants), so that every server on the
-- store honours a grant from the next call on, and stops at once when it is revoked. `uses_left` is spent
-- by the insert of each call a grant covers, in that call's transaction, under the grant's row lock.
-- `approvers` and `needs` are JSON: who approved it, with their roles, and the levels of every rule its
-- scope can reach.
CREATE TABLE grants (
    id text COLLATE "C" PRIMARY KEY,
    tool text NOT NULL,
    requester text NOT NULL,
    when_expr text,
    any_arguments integer NOT NULL CHECK (any_arguments IN (0, 1)),
    created_by text NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    uses integer,
    uses_left integer,
    uses_made integer NOT NULL DEFAULT 0,
    state text NOT NULL,
    approvers json NOT NULL,
    needs json NOT NULL,
    reason text,
    revoked_by text,
    revoked_at double precision
);
CREATE INDEX grants_active ON grants (tool, requester) WHERE state = 'active';
