-- hitl-mcp's PostgreSQL store, schema 3: what lets a person decide where a notification reaches them.
--
-- Decision links sent to one person (an email, a phone's push): only the SHA-256 of each link's token. A
-- link is bound to its request, its recipient and the digest of the arguments it showed. A decision made
-- with it spends it, and one made otherwise, or an edit, makes it stale.
CREATE TABLE link_tokens (
    sha256 text PRIMARY KEY,
    request_id text COLLATE "C" NOT NULL,
    principal text NOT NULL,
    arguments_digest text NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    used_at double precision
);
CREATE INDEX link_tokens_request ON link_tokens (request_id);

-- The Slack messages posted about a request, so that a decision updates each of them in place.
CREATE TABLE slack_messages (
    channel text NOT NULL,
    ts text NOT NULL,
    request_id text COLLATE "C" NOT NULL,
    posted_at double precision NOT NULL,
    PRIMARY KEY (channel, ts)
);
CREATE INDEX slack_messages_request ON slack_messages (request_id);
