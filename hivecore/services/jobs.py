"""The job lane's runner: routes each job to its service by the job registry.

Which service runs a kind is its row in :data:`hivecore.jobkinds.REGISTRY` (``service``, and
``approval_service`` for a job that carries out an approval: an approved ``spawn``). The service's
``run_job`` gets a :class:`~hivecore.services.context.JobContext` for the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from hivecore.jobkinds import REGISTRY, ServiceName
from hivecore.models import Job
from hivecore.services.context import JobContext, JobEnv
from hivecore.services.handles import ChildJobs


class JobService(Protocol):
    async def run_job(self, ctx: JobContext, args: Mapping[str, Any]) -> None: ...


@attrs.define
class Jobs:
    env: JobEnv
    lifecycle: JobService
    approvals: JobService
    meta_updates: JobService

    def service(self, name: ServiceName) -> JobService:
        match name:
            case "lifecycle":
                return self.lifecycle
            case "approvals":
                return self.approvals
            case "meta_update":
                return self.meta_updates

    async def run(self, job: Job, args: Mapping[str, Any], children: ChildJobs) -> None:
        service = self.service(REGISTRY[job.kind].service_for(args))
        await service.run_job(self.env.for_job(job, children), args)
