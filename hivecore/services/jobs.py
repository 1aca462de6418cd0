"""The job lane's runner: a small dispatcher over the lifecycle verbs and the approval jobs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from hivecore.models import APPROVAL_JOB_KINDS, Job
from hivecore.services.approvals import Approvals
from hivecore.services.lifecycle import Lifecycle
from hivecore.services.meta_update import MetaUpdates


@attrs.define
class Jobs:
    """Approval jobs (``apply_commit``, ``deny``, ``init_config``, and a ``spawn`` carrying an
    ``approval_id``) go to :class:`Approvals`, ``meta_update`` to :class:`MetaUpdates`; every other
    job to :class:`Lifecycle`."""

    lifecycle: Lifecycle
    approvals: Approvals
    meta_updates: MetaUpdates | None = None

    def accepted(self, job: Job, args: Mapping[str, Any]) -> None:
        self.lifecycle.accepted(job, args)

    async def run(self, job: Job, args: Mapping[str, Any]) -> None:
        if job.kind == "meta_update" and self.meta_updates is not None:
            await self.meta_updates.run_job(job, args)
        elif job.kind in APPROVAL_JOB_KINDS or (job.kind == "spawn" and "approval_id" in args):
            await self.approvals.run_job(job, args)
        else:
            await self.lifecycle.run(job, args)
