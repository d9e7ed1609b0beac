-- hitl-mcp's PostgreSQL store, schema 2: bearer tokens and inbox sessions (hitl_mcp.store.credentials),
-- so that every server on the store honours a token or a sign-in the moment it is made, and a revocation
-- at once. Only the SHA-256 of each secret is kept. A name is unique among the tokens not revoked.

CREATE TABLE tokens (
    id text COLLATE "C" PRIMARY KEY,
    name text NOT NULL,
    principal text NOT NULL,
    roles json NOT NULL,
    sha256 text NOT NULL UNIQUE,
    created_at double precision NOT NULL,
    created_by text NOT NULL,
    expires_at double precision,
    last_used_at double precision,
    revoked_at double precision
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE sessions (
    sha256 text PRIMARY KEY,
    principal text NOT NULL,
    roles json NOT NULL,
    csrf text NOT NULL,
    id_token text,
    created_at double precision NOT NULL,
    last_seen_at double precision NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);
