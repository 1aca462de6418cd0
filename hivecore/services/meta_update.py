"""The meta-update job (reference §3 ``POST /meta-update``) and the startup auto_update (§5.2).

``meta_update`` is a build-class job on the lane (agent-less): one ``lock_update`` of the chosen
inputs (one combined commit), then a sequential loop of child ``rebuild`` jobs
(:meth:`~hivecore.services.context.JobContext.submit_child`: they carry the job's id as
``parent_id`` and run inside the parent's build turn, one after another): an input ``hyperhive``
or ``hyperhive/…`` rebuilds every agent, ``agent-<n>`` or ``agent-<n>/…`` only ``n``. Each rebuild
fires its ``rebuilt`` helper event; ``meta_update_running`` is published true/false around the job.

auto_update (at startup, after the lane is open): sync the meta flake, bump ``hyperhive`` once (a
failure is logged and the run goes on), then rebuild every stale agent one at a time (source
``auto_update``). ``HIVE_SKIP_AUTO_UPDATE=1`` skips the bump and the rebuilds.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from hivecore import store as st
from hivecore.errors import HiveError
from hivecore.meta import HYPERHIVE
from hivecore.names import validate_name
from hivecore.services.context import JobContext
from hivecore.services.handles import AgentViews
from hivecore.services.meta_build import MetaBuild
from hivecore.wire.events import MetaUpdateRunning

log = logging.getLogger(__name__)

SKIP_AUTO_UPDATE_ENV = "HIVE_SKIP_AUTO_UPDATE"


def _valid(name: object) -> bool:
    try:
        validate_name(name)
    except HiveError:
        return False
    return True


def _plan_of(args: Mapping[str, Any]) -> tuple[list[str] | None, list[str]]:
    """``(plan, done)`` a previous run of the job recorded in its args (``None``: no plan yet)."""
    plan, done = args.get("plan"), args.get("done", [])
    if not isinstance(plan, list) or not all(_valid(n) for n in plan):
        return None, []
    if not isinstance(done, list):
        done = []
    return list(plan), [n for n in done if isinstance(n, str) and n in plan]


def affected_agents(inputs: Sequence[str], agents: Sequence[str]) -> list[str]:
    """Which agents an update of ``inputs`` rebuilds, in ``agents``' order."""
    if any(i == HYPERHIVE or i.startswith(HYPERHIVE + "/") for i in inputs):
        return list(agents)
    chosen = {i.split("/", 1)[0].removeprefix("agent-") for i in inputs if i.startswith("agent-")}
    return [a for a in agents if a in chosen]


@attrs.define
class MetaUpdates:
    builder: MetaBuild
    views: AgentViews
    """For auto_update, which runs outside any job (a job reads the views through its context)."""

    async def run_job(self, ctx: JobContext, args: Mapping[str, Any]) -> None:
        raw = args.get("inputs", [])
        inputs = [str(i) for i in raw] if isinstance(raw, list) else []
        meta = self.builder.meta
        if not meta.running:
            raise HiveError("the meta flake is not available")
        ctx.publish(MetaUpdateRunning(running=True))
        try:
            plan, done = _plan_of(args)
            if plan is None:
                await meta.lock_update(inputs)
                # the runtime's agents, not the views: at a replay the views are not populated yet
                agents = sorted(await self.builder.runtime.list(), key=lambda n: (n != "hm1nd", n))
                plan, done = affected_agents(inputs, agents), []
                await self._record(ctx, inputs, plan, done, args)  # a replay finishes this plan
            else:
                log.info(
                    "meta update %s: resuming its plan (done: %s)",
                    ", ".join(inputs),
                    ", ".join(done) or "none",
                )
            targets = [n for n in plan if n not in done]
            log.info("meta update %s: rebuilding %s", ", ".join(inputs), ", ".join(targets) or "nobody")
            failed: list[str] = []
            for name in targets:
                queued = ctx.busy_with(name)
                if name not in await self.builder.runtime.list([name]):
                    log.info("meta update: %s is gone; not rebuilding it", name)
                elif queued is not None and queued.kind == "rebuild" and queued.state == "queued":
                    log.info("meta update: %s already has a rebuild queued (job %d)", name, queued.id)
                    # it runs after this job, from the updated lock
                else:
                    try:
                        await ctx.submit_child("rebuild", name, source="meta_update")
                    except HiveError as exc:
                        log.warning("meta update: rebuild of %s failed: %s", name, exc)
                        failed.append(f"{name}: {exc}")
                done.append(name)
                await self._record(ctx, inputs, plan, done, args)
            if failed:
                raise HiveError(
                    f"meta update {', '.join(inputs)}: {len(failed)} rebuild(s) failed:\n" + "\n".join(failed)
                )
        finally:
            ctx.publish(MetaUpdateRunning(running=False))

    async def _record(
        self, ctx: JobContext, inputs: list[str], plan: list[str], done: list[str], given: Mapping[str, Any]
    ) -> None:
        """Persist the job's plan and progress in its journal row (its replay resumes from them;
        an ``approval_id`` the job carries out is kept, so the replay still resolves that row)."""
        kept = {k: given[k] for k in ("approval_id",) if k in given}
        args = json.dumps({**kept, "inputs": inputs, "plan": plan, "done": done})
        job_id = ctx.job.id
        await ctx.store.call(lambda c: st.set_job_args(c, job_id, args))

    async def auto_update(self, submit: Any) -> list[str]:
        """The startup step (see the module doc); returns the agents it rebuilt. ``submit`` is the
        façade's ``rebuild`` (a journaled lane job per agent, one at a time)."""
        meta = self.builder.meta
        if not meta.running:
            return []
        try:
            await self.builder.sync()
        except HiveError as exc:
            log.error("auto_update: could not sync the meta flake: %s", exc)
        if os.environ.get(SKIP_AUTO_UPDATE_ENV) == "1":
            log.info("auto_update: skipped (%s=1)", SKIP_AUTO_UPDATE_ENV)
            return []
        try:
            await meta.lock_update_hyperhive()
        except HiveError as exc:
            log.error("auto_update: could not update the hyperhive input: %s", exc)
        await self.views.rescan()
        stale = [n for n, v in self.views.rows().items() if v.needs_update]
        rebuilt: list[str] = []
        for name in stale:
            try:
                await submit(name, source="auto_update")
                rebuilt.append(name)
            except HiveError as exc:
                log.warning("auto_update: rebuild of %s failed: %s", name, exc)
            await trio.lowlevel.checkpoint()
        log.info("auto_update: done (rebuilt %d of %d stale agent(s))", len(rebuilt), len(stale))
        return rebuilt
