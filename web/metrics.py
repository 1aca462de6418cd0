"""``GET /metrics``: the daemon's Prometheus exposition (:mod:`hivecore.metrics`), behind the same
gate as ``/api/*`` (a scraper sends ``Authorization: Bearer <operator token>``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from quart import Blueprint, Response, request

from hivecore.metrics import CONTENT_TYPE


def blueprint(scrape: Callable[[], Awaitable[bytes]]) -> Blueprint:
    bp = Blueprint("metrics", __name__)

    @bp.route("/metrics", methods=["GET", "HEAD"])
    async def metrics() -> Response:
        body = await scrape() if request.method == "GET" else b""
        return Response(body, content_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    return bp
