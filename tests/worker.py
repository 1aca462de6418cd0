"""What keeps pytest-xdist workers apart (``make test`` runs the suite on several at once).

Everything else a test uses is its own already: a fresh state dir (``mkdtemp``), ephemeral ports,
sockets under that state dir. What is left is host-wide: the agents' uids.
"""

from __future__ import annotations

import os

from hivecore.limits import AGENT_ID_COUNT, DEFAULT_AGENT_UID_BASE


def worker_index() -> int:
    """This xdist worker's number (``gw3`` → 3); 0 without xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw")) if worker.startswith("gw") else 0


AGENT_UID_BASE = DEFAULT_AGENT_UID_BASE + worker_index() * AGENT_ID_COUNT
"""This worker's ``--agent-uid-base``: each worker's daemons hand out agent uids (and the evaluator's)
from a range of their own, so agents of two tests running side by side never share a uid."""
