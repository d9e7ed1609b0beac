"""One log line when a store becomes unavailable and one when it is back, whoever in the process met it.

A server has several loops reading the store (housekeeping, the runner of approved requests, the change
feed, notification delivery, the recorder of held outcomes); each would otherwise log every failed pass,
with a traceback, for as long as the outage lasts. None of that helps an operator: the reason, once, and
the moment it ended, do.
"""

from __future__ import annotations

import logging
import time
import weakref

from hitl_mcp.errors import StoreUnavailable

logger = logging.getLogger("hitl_mcp.store")


class Outage:
    """Whether one store is known to be unavailable, and since when."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.since: float | None = None

    def failed(self, fault: StoreUnavailable, consequence: str = "") -> None:
        """Note a fault; the first of an outage is logged, as a WARNING line without a traceback."""
        if self.reason is not None:
            return
        self.reason, self.since = fault.reason, time.monotonic()
        then = f"; {consequence}" if consequence else ""
        logger.warning("the store is unavailable: %s%s", fault.reason, then)

    def ok(self) -> None:
        """Note that the store answered; ending an outage is logged, as one INFO line."""
        if self.reason is None:
            return
        lasted = time.monotonic() - (self.since or time.monotonic())
        self.reason = self.since = None
        logger.info("the store is available again, after %.1fs", lasted)


_outages: weakref.WeakKeyDictionary[object, Outage] = weakref.WeakKeyDictionary()


def outage_of(store: object) -> Outage:
    """The one `Outage` of `store`, shared by every loop of the process that uses it."""
    found = _outages.get(store)
    if found is None:
        found = _outages[store] = Outage()
    return found
