-- The report's running totals as schema 7 (hitl-mcp before the hourly counts) made them, read from a
-- schema-7 store with `SELECT sql FROM sqlite_master`: tests/test_report_totals.py builds a schema-7
-- store from it to upgrade. Statements are separated by lines holding only "--;".
CREATE TABLE report_requests (
    request_id TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    first_at REAL NOT NULL,
    filed_at REAL,
    status TEXT NOT NULL,
    verdict TEXT,
    decided INTEGER NOT NULL DEFAULT 0,
    wait REAL,
    expired INTEGER NOT NULL DEFAULT 0,
    escalated INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
--;
CREATE INDEX report_requests_outcome ON report_requests (tool, status)
--;
CREATE INDEX report_requests_wait ON report_requests (wait) WHERE wait IS NOT NULL
--;
CREATE TABLE report_events (
    request_id TEXT NOT NULL,
    event TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (request_id, event)
) WITHOUT ROWID
--;
CREATE TABLE report_votes (
    request_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    event TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (request_id, actor, event)
) WITHOUT ROWID
--;
CREATE TRIGGER report_fold AFTER INSERT ON audit
WHEN NEW.event NOT IN ('grant-approved', 'grant-created', 'grant-revoked', 'pass-outcome', 'token-made', 'token-revoked', 'tool-changed')
BEGIN
    INSERT INTO report_requests (request_id, tool, first_at, filed_at, status)
    VALUES (
        NEW.request_id,
        COALESCE((CASE WHEN json_valid(NEW.details) AND json_type(NEW.details, '$.tool') = 'text' AND json_extract(NEW.details, '$.tool') <> '' THEN json_extract(NEW.details, '$.tool') END), '(unknown)'),
        NEW.at,
        CASE WHEN NEW.event = 'filed' THEN NEW.at END,
        'pending'
    )
    ON CONFLICT (request_id) DO NOTHING;
    UPDATE report_requests SET
        status = CASE WHEN NEW.event IN ('approved', 'cancelled', 'claimed', 'confirmed', 'denied', 'executed', 'expired', 'failed', 'filed', 'granted', 'passed', 'policy-auto-approved', 'rejected', 'retried') THEN CASE WHEN NEW.event = 'approved' THEN COALESCE((CASE WHEN json_valid(NEW.details) AND json_type(NEW.details, '$.status') = 'text' AND json_extract(NEW.details, '$.status') <> '' THEN json_extract(NEW.details, '$.status') END), 'approved') ELSE CASE NEW.event WHEN 'filed' THEN 'pending' WHEN 'policy-auto-approved' THEN 'approved' WHEN 'granted' THEN 'approved' WHEN 'confirmed' THEN 'approved' WHEN 'rejected' THEN 'rejected' WHEN 'claimed' THEN 'executing' WHEN 'retried' THEN 'approved' WHEN 'executed' THEN 'executed' WHEN 'failed' THEN 'failed' WHEN 'expired' THEN 'expired' WHEN 'cancelled' THEN 'cancelled' WHEN 'denied' THEN 'denied' WHEN 'passed' THEN 'passed' END END ELSE status END,
        verdict = CASE
            WHEN NEW.event = 'rejected' THEN 'rejected'
            WHEN NEW.event = 'approved' AND verdict IS NULL AND CASE WHEN NEW.event = 'approved' THEN COALESCE((CASE WHEN json_valid(NEW.details) AND json_type(NEW.details, '$.status') = 'text' AND json_extract(NEW.details, '$.status') <> '' THEN json_extract(NEW.details, '$.status') END), 'approved') ELSE CASE NEW.event WHEN 'filed' THEN 'pending' WHEN 'policy-auto-approved' THEN 'approved' WHEN 'granted' THEN 'approved' WHEN 'confirmed' THEN 'approved' WHEN 'rejected' THEN 'rejected' WHEN 'claimed' THEN 'executing' WHEN 'retried' THEN 'approved' WHEN 'executed' THEN 'executed' WHEN 'failed' THEN 'failed' WHEN 'expired' THEN 'expired' WHEN 'cancelled' THEN 'cancelled' WHEN 'denied' THEN 'denied' WHEN 'passed' THEN 'passed' END END <> 'pending' THEN 'approved'
            ELSE verdict END,
        wait = CASE WHEN NEW.event IN ('approved', 'rejected') AND decided = 0 AND filed_at IS NOT NULL
            THEN NEW.at - filed_at ELSE wait END,
        decided = CASE WHEN NEW.event IN ('approved', 'rejected') THEN 1 ELSE decided END,
        expired = CASE WHEN NEW.event = 'expired' THEN 1 ELSE expired END,
        escalated = CASE WHEN NEW.event = 'escalated' THEN 1 ELSE escalated END
    WHERE request_id = NEW.request_id;
    INSERT INTO report_events (request_id, event, n) VALUES (NEW.request_id, NEW.event, 1)
    ON CONFLICT (request_id, event) DO UPDATE SET n = n + 1;
    INSERT INTO report_votes (request_id, actor, event, n)
    SELECT NEW.request_id, NEW.actor, NEW.event, 1
    WHERE NEW.event IN ('approved', 'rejected') AND (CASE WHEN NOT json_valid(NEW.details) THEN 0 WHEN json_type(NEW.details, '$.confirmation') = 'true' THEN 1 WHEN json_type(NEW.details, '$.confirmation') IN ('integer', 'real') THEN json_extract(NEW.details, '$.confirmation') <> 0 WHEN json_type(NEW.details, '$.confirmation') = 'text' THEN json_extract(NEW.details, '$.confirmation') <> '' WHEN json_type(NEW.details, '$.confirmation') = 'array' THEN json_array_length(NEW.details, '$.confirmation') > 0 WHEN json_type(NEW.details, '$.confirmation') = 'object' THEN json_extract(NEW.details, '$.confirmation') <> '{}' ELSE 0 END) = 0
    ON CONFLICT (request_id, actor, event) DO UPDATE SET n = n + 1;
END
--;
CREATE TRIGGER report_unfold AFTER DELETE ON audit
BEGIN
    DELETE FROM report_requests WHERE request_id = OLD.request_id;
    DELETE FROM report_events WHERE request_id = OLD.request_id;
    DELETE FROM report_votes WHERE request_id = OLD.request_id;
END
--;
