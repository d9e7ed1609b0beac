"""The delivery worker: claims due outbox rows, sends them, and marks each delivered, to retry, or dead.

Run one per server, beside the gate's housekeeping — any number of servers may share a store:

    async with open_gate(settings) as gate, anyio.create_task_group() as tasks:
        tasks.start_soon(deliver_forever, gate)
        ...
        tasks.cancel_scope.cancel()

Guarantees, and their one limit:

- Filing never waits for a receiver: the transition only inserts rows; sending happens here.
- A row is claimed by one worker at a time (a conditional UPDATE with a fresh claim token and a lease),
  so two workers never send it at once, in one process or several.
- A success is recorded in the first write after the receiver accepted it, and a delivered row is never
  claimed again: a restart resends nothing that was recorded as delivered, and loses nothing (pending rows
  wait in the store).
- At least once, not exactly once: if the process dies (or is stopped) after the receiver accepted a
  message but before that write, the row is claimed again — at once after a clean stop, after its lease
  otherwise — and the receiver gets it twice. Webhooks carry `delivery_id` (and the X-Hitl-Delivery
  header) and emails a Message-ID per row, so a receiver can drop the repeat.
- A failed attempt is retried after an exponential backoff with jitter, bounded by
  `backoff_max_seconds`; after `max_attempts` attempts — or at once on a refusal no retry can change (an
  HTTP 4xx other than 408/425/429, an SMTP 5xx) — the row is `dead`, shown by `hitl notify status` and
  requeued by `hitl notify retry`. Rows are not ordered: each carries its event's time and audit seq.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from types import TracebackType
from typing import Self

import aiosmtplib
import anyio
import httpx2

from hitl_mcp.actions.send_email import MESSAGE_ID_DOMAIN, SendEmailSettings, deliver
from hitl_mcp.config import PrincipalSettings, Settings
from hitl_mcp.errors import StoreUnavailable
from hitl_mcp.gate import Gate
from hitl_mcp.metrics import PROCESS
from hitl_mcp.models import Request
from hitl_mcp.notify import approver_mail, links, ntfy, render
from hitl_mcp.notify.outbox import ClaimedDelivery, OutboxStore
from hitl_mcp.notify.settings import Notifier
from hitl_mcp.notify.slack_api import SlackApi, SlackCallFailed
from hitl_mcp.notify.slack_delivery import RequestReader
from hitl_mcp.notify.slack_delivery import deliver as deliver_to_slack
from hitl_mcp.store import wait_for_change
from hitl_mcp.store.links import LinkStore
from hitl_mcp.store.outage import outage_of
from hitl_mcp.store.slack_messages import SlackMessageStore

logger = logging.getLogger(__name__)

ERROR_LIMIT = 500
# One pass delivers at most this many batches, then looks for what is due afresh.
MAX_BATCHES_PER_PASS = 1000
RETRYABLE_HTTP = frozenset({408, 425, 429})


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard the worker tries. The defaults give up after 12 attempts over about 45 minutes."""

    max_attempts: int = 12
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 900.0
    jitter: float = 0.5
    """The share of each delay drawn at random: 0.5 waits between half and all of it."""
    timeout_seconds: float = 10.0
    """One attempt, connection to answer, HTTP or SMTP."""
    lease_seconds: float = 60.0
    """How long a claim holds a row; a worker that dies holding one delays it this long."""
    batch: int = 8
    """Rows claimed and sent concurrently."""
    poll_seconds: float = 0.05
    """How often an idle worker checks the store's change counter for new rows."""
    idle_seconds: float = 5.0
    """The longest an idle worker goes without looking at the outbox."""
    retention_seconds: float = 7 * 86_400
    """Delivered rows are forgotten after this long; the audit trail keeps their events."""
    prune_every_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 1000:
            raise ValueError("max_attempts: must be between 1 and 1000")
        if not 0 < self.backoff_base_seconds <= self.backoff_max_seconds:
            raise ValueError("backoff_base_seconds: must be positive and at most backoff_max_seconds")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter: must be at least 0 and less than 1")
        if self.timeout_seconds <= 0 or self.lease_seconds < 2 * self.timeout_seconds:
            raise ValueError("lease_seconds: must be at least twice timeout_seconds, which must be positive")
        if self.batch < 1 or self.poll_seconds <= 0 or self.idle_seconds < self.poll_seconds:
            raise ValueError("batch, poll_seconds, idle_seconds: must be positive, idle ≥ poll")

    def backoff(self, attempts: int, draw: Callable[[], float] = random.random) -> float:
        """The wait after the `attempts`-th failed attempt: base × 2^(attempts-1), capped, less jitter."""
        delay = min(self.backoff_max_seconds, self.backoff_base_seconds * 2.0 ** min(attempts - 1, 60))
        return delay * (1 - self.jitter * draw())


class DeliveryFailed(Exception):
    """An attempt that did not deliver; `permanent` when retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message[:ERROR_LIMIT])
        self.permanent = permanent
        self.retry_after = retry_after


class Deliverer:
    """Delivers the outbox of one store with the notifiers and SMTP settings of `settings`."""

    def __init__(
        self,
        store: OutboxStore,
        settings: Settings,
        *,
        worker: str,
        policy: DeliveryPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy or DeliveryPolicy()
        self.worker = worker
        self.clock = clock
        self.notifiers = {notifier.key: notifier for notifier in settings.notifiers}
        smtp = settings.actions.get("send_email")
        self.smtp = smtp if isinstance(smtp, SendEmailSettings) else SendEmailSettings()
        # Where the inbox is reached: each message then links to its request's page.
        self.public_url = settings.web.public_url
        self.principals = settings.principals
        self.slack = (
            None if settings.slack is None else SlackApi(settings.slack, timeout=self.policy.timeout_seconds)
        )
        self._http: httpx2.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self._http = httpx2.AsyncClient(timeout=self.policy.timeout_seconds, follow_redirects=False)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            with anyio.CancelScope(shield=True):
                await self._http.aclose()
            self._http = None

    # -- the loop --------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Deliver whatever is due, then wait for a change in the store or the next due row; forever."""
        pruned = float("-inf")
        while True:
            try:
                if self.clock() - pruned >= self.policy.prune_every_seconds:
                    pruned = self.clock()
                    await self.store.outbox_prune(pruned - self.policy.retention_seconds)
                    if isinstance(self.store, LinkStore):
                        # Kept as long as delivered rows, so an old link's page still says it expired.
                        await self.store.link_prune(pruned - self.policy.retention_seconds)
                # The counter is read before looking, so a row added meanwhile cuts the wait short.
                before = await self.store.change_counter()
                await self.deliver_due()
                await self._wait(before, await self.store.outbox_next_due())
            except StoreUnavailable as fault:
                outage_of(self.store).failed(fault)  # logged once per outage, not once per pass
                await anyio.sleep(self.policy.idle_seconds)
            except Exception:
                logger.exception(
                    "notification delivery failed; trying again in %ss", self.policy.idle_seconds
                )
                await anyio.sleep(self.policy.idle_seconds)

    async def deliver_due(self) -> int:
        """Claim and send every row due now, a batch at a time; returns how many attempts were made."""
        now = self.clock()
        attempted = 0
        for _ in range(MAX_BATCHES_PER_PASS):
            # A read first: an idle worker wakes on every commit and must not take the write lock for it.
            due = await self.store.outbox_next_due()
            if due is None or due > now:
                break
            rows = await self.store.outbox_claim(
                self.worker, now, self.policy.batch, self.policy.lease_seconds
            )
            if not rows:
                break
            async with anyio.create_task_group() as tasks:
                for row in rows:
                    tasks.start_soon(self._deliver, row)
            attempted += len(rows)
        return attempted

    async def _wait(self, before: int, due: float | None) -> None:
        """Until the store changes after `before`, or the next row falls due, or `idle_seconds` pass."""
        policy = self.policy
        timeout = policy.idle_seconds
        if due is not None:
            timeout = min(timeout, max(due - self.clock(), policy.poll_seconds))
        await wait_for_change(self.store, before, timeout, poll=policy.poll_seconds)

    # -- one row ---------------------------------------------------------------------------------

    async def _deliver(self, row: ClaimedDelivery) -> None:
        notifier = self.notifiers.get(row.notifier)
        error: DeliveryFailed | None = None
        try:
            if notifier is None:
                raise DeliveryFailed(
                    f"no [[notify]] entry sends to {row.label} any more; restore it and run "
                    "`hitl notify retry`",
                    permanent=True,
                )
            with anyio.fail_after(self.policy.timeout_seconds):
                await self._send(notifier, row)
        except DeliveryFailed as failed:
            error = failed
        except TimeoutError:
            error = DeliveryFailed(f"no answer within {self.policy.timeout_seconds:g}s")
        except Exception as crash:
            logger.exception("sending notification %s to %s crashed", row.row_id, row.label)
            error = DeliveryFailed(f"the sender crashed ({type(crash).__name__}: {crash})")
        except BaseException:
            # Stopped mid-send: whether it arrived is unknown. Hand the row back so the next worker sends
            # it at once rather than after the lease: the at-least-once window, never a loss.
            with anyio.CancelScope(shield=True):
                await self._quietly(self.store.outbox_release(row.row_id, row.claim))
            raise
        with anyio.CancelScope(shield=True):
            await self._record(row, error)

    async def _record(self, row: ClaimedDelivery, error: DeliveryFailed | None) -> None:
        now = self.clock()
        if error is None:
            if not await self.store.outbox_delivered(row.row_id, row.claim, now):
                logger.warning(
                    "notification %s reached %s after its claim ran out; another worker may send it again",
                    row.row_id,
                    row.label,
                )
            return
        PROCESS.notification_failed(row.channel)
        dead = error.permanent or row.attempts >= self.policy.max_attempts
        retry_at = None
        if not dead:
            wait = self.policy.backoff(row.attempts)
            if error.retry_after is not None:
                wait = max(wait, min(error.retry_after, self.policy.backoff_max_seconds))
            retry_at = now + wait
        message = f"attempt {row.attempts}: {error}"
        await self.store.outbox_failed(row.row_id, row.claim, message, now, retry_at)
        if dead:
            logger.warning("notification %s to %s is dead: %s", row.row_id, row.label, message)
        else:
            logger.info(
                "notification %s to %s failed (%s); next attempt in %.1fs",
                row.row_id,
                row.label,
                message,
                (retry_at or now) - now,
            )

    async def _quietly(self, work: Awaitable[object]) -> None:
        try:
            await work
        except Exception:
            logger.exception("could not hand a notification back to the outbox")

    # -- senders ---------------------------------------------------------------------------------

    async def _send(self, notifier: Notifier, row: ClaimedDelivery) -> None:
        if notifier.webhook is not None:
            body = render.webhook_body(row.payload, row.row_id, public_url=self.public_url)
            await self._post(notifier.webhook, body, row, notifier)
        elif notifier.slack_channel is not None:
            await self._slack(notifier, row)
        elif notifier.email_approvers:
            await self._email_approvers(notifier, row)
        elif notifier.ntfy is not None:
            await self._ntfy(notifier, row)
        elif notifier.slack_webhook is not None:
            await self._post(
                notifier.slack_webhook,
                render.slack_body(row.payload, public_url=self.public_url),
                row,
                notifier,
            )
        else:
            await self._email(notifier, row)

    async def _post(
        self,
        url: str,
        body: dict[str, object],
        row: ClaimedDelivery,
        notifier: Notifier,
        extra: dict[str, str] | None = None,
    ) -> None:
        if self._http is None:
            raise RuntimeError("the deliverer is not open: use `async with Deliverer(...)`")
        content = json.dumps(body, sort_keys=True, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "hitl-mcp",
            "X-Hitl-Event": row.event,
            "X-Hitl-Delivery": str(row.row_id),
        }
        headers.update(extra or {})
        if notifier.secret is not None:
            headers["X-Hitl-Signature"] = "sha256=" + sign(notifier.secret.get_secret_value(), content)
        try:
            response = await self._http.post(url, content=content, headers=headers)
        except httpx2.HTTPError as error:
            raise DeliveryFailed(f"{type(error).__name__}: {error}") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        reply = " ".join(response.text.split())[:200]
        message = f"HTTP {status} from {notifier.label}" + (f": {reply}" if reply else "")
        if status >= 500 or status in RETRYABLE_HTTP:
            raise DeliveryFailed(message, retry_after=_retry_after(response.headers.get("Retry-After")))
        raise DeliveryFailed(message, permanent=True)

    async def _slack(self, notifier: Notifier, row: ClaimedDelivery) -> None:
        store = self.store
        if self.slack is None or not isinstance(store, SlackMessageStore):
            raise DeliveryFailed("posting to a Slack channel needs a [slack] table", permanent=True)

        async def current(request_id: str) -> Request | None:
            return await store.get(request_id) if isinstance(store, RequestReader) else None

        try:
            await deliver_to_slack(
                self.slack, store, current, notifier, row, public_url=self.public_url, now=self.clock()
            )
        except SlackCallFailed as failed:
            raise DeliveryFailed(
                str(failed), permanent=failed.permanent, retry_after=failed.retry_after
            ) from None

    async def _ntfy(self, notifier: Notifier, row: ClaimedDelivery) -> None:
        assert notifier.ntfy is not None
        decide_url = None
        store = self.store
        if notifier.principal is not None and self.public_url is not None:
            if not isinstance(store, approver_mail.LinkSource):
                raise DeliveryFailed("decision links need a store that keeps them", permanent=True)
            decide_url = await approver_mail.personal_link(
                store,
                row.payload,
                notifier.principal,
                self.principals.get(notifier.principal, PrincipalSettings()).roles,
                public_url=self.public_url,
                now=self.clock(),
                lifetime_seconds=notifier.link_hours * 3600,
            )
        if "notice" in row.payload:
            published: dict[str, object] = {
                "topic": ntfy.endpoint(notifier.ntfy)[1],
                "title": render.subject(row.payload),
                "message": render.text(row.payload),
            }
        else:
            published = ntfy.body(
                row.payload,
                notifier.ntfy,
                now=self.clock(),
                request_url=render.request_url(row.payload, self.public_url),
                decide_url=decide_url,
            )
        token_value = notifier.ntfy_token
        auth = {} if token_value is None else {"Authorization": f"Bearer {token_value.get_secret_value()}"}
        await self._post(ntfy.endpoint(notifier.ntfy)[0], published, row, notifier, auth)

    async def _email(self, notifier: Notifier, row: ClaimedDelivery) -> None:
        assert notifier.email is not None
        message = EmailMessage()
        message["From"] = notifier.sender
        message["To"] = notifier.email
        message["Subject"] = render.subject(row.payload)
        message["Date"] = formatdate(usegmt=True)
        # One id per row: a message sent twice (the at-least-once window) is recognisably the same.
        message["Message-ID"] = f"<notify-{row.row_id}.{row.request_id}@{MESSAGE_ID_DOMAIN}>"
        message["X-Hitl-Event"] = row.event
        message.set_content(render.text(row.payload, public_url=self.public_url))
        await self._mail(message, notifier.email)

    async def _email_approvers(self, notifier: Notifier, row: ClaimedDelivery) -> None:
        store = self.store
        if self.public_url is None or not isinstance(store, approver_mail.LinkSource):
            raise DeliveryFailed(
                "decision links need [web] public_url and a store that keeps them", permanent=True
            )
        request = await approver_mail.waiting(store, row.payload)
        if request is None:
            return  # decided, withdrawn or edited since: nobody is asked to decide what this shows
        # Every attempt mints fresh links (no plaintext token is kept): see notify.links.
        for principal, address in approver_mail.recipients(request, self.principals):
            token = await links.mint(
                store, request, principal, now=self.clock(), lifetime_seconds=notifier.link_hours * 3600
            )
            message = approver_mail.message(
                row.payload,
                row_id=row.row_id,
                principal=principal,
                address=address,
                sender=notifier.sender,
                link=links.link_url(self.public_url, request.request_id, token),
                public_url=self.public_url,
            )
            await self._mail(message, address)

    async def _mail(self, message: EmailMessage, address: str) -> None:
        smtp = self.smtp
        try:
            await deliver(message, smtp, timeout=min(smtp.timeout_seconds, self.policy.timeout_seconds))
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [refused.code for refused in error.recipients]
            raise DeliveryFailed(
                f"SMTP refused {address}: {error}", permanent=bool(codes) and min(codes) >= 500
            ) from None
        except aiosmtplib.SMTPResponseException as error:
            raise DeliveryFailed(f"SMTP {error.code}: {error.message}", permanent=error.code >= 500) from None
        except (aiosmtplib.SMTPException, OSError) as error:
            raise DeliveryFailed(f"SMTP: {type(error).__name__}: {error}") from None


def sign(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of `body`: a receiver checks `X-Hitl-Signature: sha256=<this>`."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the backoff is bounded anyway
    return seconds if seconds >= 0 else None


def _outbox(gate: Gate) -> OutboxStore | None:
    store = gate.store
    if isinstance(store, OutboxStore):
        return store
    logger.warning(
        "the store %s keeps no notification outbox; notifications are not sent", type(store).__name__
    )
    return None


async def deliver_forever(gate: Gate, *, policy: DeliveryPolicy | None = None) -> None:
    """Deliver the gate's store's notifications until cancelled; returns at once when none are configured.

    Start it in the server's lifespan beside `gate.maintain`: `tasks.start_soon(deliver_forever, gate)`.
    """
    if not gate.settings.notifiers:
        return
    store = _outbox(gate)
    if store is None:
        return
    async with Deliverer(store, gate.settings, worker=gate.worker, policy=policy) as deliverer:
        await deliverer.run_forever()


async def deliver_due(gate: Gate, *, policy: DeliveryPolicy | None = None) -> int:
    """One pass: send what is due now and return how many attempts were made (for tests and scripts)."""
    store = _outbox(gate)
    if store is None:
        return 0
    async with Deliverer(store, gate.settings, worker=gate.worker, policy=policy) as deliverer:
        return await deliverer.deliver_due()
