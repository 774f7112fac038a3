"""How a stream worker stops when its infrastructure fails: before the batch is acknowledged.

The agents take their records by batch (``stream.batches``) and a batch is
acknowledged only after its outputs are confirmed and its state recorded (by
its body, or for the markets by the write behind it). An exception must still
not unwind through Faust, which would carry on without the crashed agent and
commit the offsets acknowledged so far at a graceful stop. So per-record
problems are dead-lettered where they occur, and anything else (the broker
refusing a send, Redis down beyond its retry budget, a bug) reaches
``stream.batches.each_batch`` (from the body or the write behind it), which ends
the process here at once. The batch stays uncommitted and is redone after the
restart (Kubernetes, compose or ``chaincast up`` restart the worker); the state
it would have recorded was not recorded, because state is saved only after the
outputs are acknowledged.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

log = logging.getLogger(__name__)

# EX_TEMPFAIL: the batch was not processed; running again will process it.
EXIT_UNACKNOWLEDGED = 75


def stop_unacknowledged(where: str, exc: BaseException) -> NoReturn:
    """End the worker now, leaving the current batch unacknowledged (redone after a restart)."""
    log.critical("%s: %s: %s; stopping before the batch is acknowledged (it is redone after restart)",
                 where, type(exc).__name__, exc, exc_info=exc)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_UNACKNOWLEDGED)
