"""Kicks to agents and helper events to the manager: broker messages from ``system`` (best effort).

They go through :meth:`Broker.post`, so a waiting ``recv`` of the recipient wakes at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hivecore.kick import kick_body
from hivecore.models import Approval
from hivecore.names import MANAGER_AGENT, MANAGER_NAME, SYSTEM_SENDER
from hivecore.services.broker import Broker
from hivecore.services.handles import Publisher
from hivecore.wire.events import AgentNotice, ApprovalResolved
from hivecore.wire.helper import ApprovalResolvedHelper, HelperEvent, helper_to_body

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, broker: Broker, bus: Publisher, state_dir: Callable[[str], str]) -> None:
        """``state_dir(name)``: the agent's state dir as it sees it
        (:func:`hivecore.kick.agent_state_dir`)."""
        self._broker = broker
        self._bus = bus
        self._state_dir = state_dir
        self.on_resolved: Callable[[int], None] | None = None
        """Called with the id of every approval announced resolved (the review evaluations
        actor stops that approval's evaluation)."""

    @property
    def broker(self) -> Broker:
        """The broker (a job binds or ends an agent's incarnation through it)."""
        return self._broker

    def approval_event(self, approval: Approval, sha: str | None = None, tag: str | None = None) -> None:
        """``approval_resolved`` on the event bus (the dashboard's live update)."""
        if self.on_resolved is not None and approval.status != "pending":
            self.on_resolved(approval.id)
        self._bus.publish(
            ApprovalResolved(
                id=approval.id,
                agent=approval.agent,
                status=approval.status,
                approval_kind=approval.kind,
                note=approval.note,
                description=approval.description,
                sha=sha,
                tag=tag,
            )
        )

    async def approval_resolved(
        self, approval: Approval, sha: str | None = None, tag: str | None = None
    ) -> None:
        """A resolved approval: ``approval_resolved`` on the bus and to the manager."""
        self.approval_event(approval, sha, tag)
        event = ApprovalResolvedHelper(
            id=approval.id,
            agent=approval.agent,
            commit_ref=approval.commit_ref,
            status=approval.status,
            note=approval.note,
            sha=sha,
            tag=tag,
            description=approval.description,
        )
        await self.notify_manager(event, approval.agent, approval.note)

    async def kick(self, name: str, reason: str) -> None:
        """Queue a kick for ``name``; a failure is logged, never raised."""
        try:
            recipient = MANAGER_AGENT if name == MANAGER_NAME else name
            body = kick_body(name, reason, self._state_dir(name))
            await self._broker.post(SYSTEM_SENDER, recipient, body)
            log.info("kicked %s: %s", name, reason)
        except Exception:
            log.warning("could not kick %s (%s)", name, reason, exc_info=True)

    async def notify_manager(self, event: HelperEvent, agent: str, note: str | None = None) -> None:
        """A helper event into the manager's inbox, mirrored on the event bus; failures are logged."""
        self._bus.publish(AgentNotice(event=event.EVENT, agent=agent, note=note))
        try:
            body = helper_to_body(event)
            await self._broker.post(SYSTEM_SENDER, MANAGER_AGENT, body)
        except Exception:
            log.warning("could not notify the manager of %s for %s", event.EVENT, agent, exc_info=True)
