-- hitl-mcp's PostgreSQL store, schema 5: archives and the audit checkpoint (hitl_mcp.store.archive).
-- One row per `hitl db archive`: the audit records after from_seq up to through_seq, with the requests and
-- decisions they were about, left the store for the file whose SHA-256 is `sha256`. The row of the largest
-- through_seq is the checkpoint the remaining trail continues from.
CREATE TABLE archives (
    through_seq bigint PRIMARY KEY,
    through_hash text NOT NULL,
    from_seq bigint NOT NULL,
    from_hash text NOT NULL,
    sha256 text NOT NULL,
    file text NOT NULL,
    before double precision NOT NULL,
    created_at double precision NOT NULL,
    requests bigint NOT NULL,
    records bigint NOT NULL
);
