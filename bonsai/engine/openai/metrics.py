"""vLLM's counters from a server's ``/metrics`` (Prometheus text, read by ``prometheus_client``)."""

from __future__ import annotations

import logging
from collections.abc import Collection

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bonsai.engine.openai.failures import describe
from bonsai.engine.openai.pool import QUICK_TIMEOUT_S, Endpoint, EndpointPool

log = logging.getLogger(__name__)


def prometheus_counters(text: str, wanted: Collection[str]) -> dict[str, float]:
    """Totals of the ``wanted`` counters, summed over their labels; the names are without ``_total``.

    By sample name, so a counter counts whether or not its ``# TYPE`` line came with it.
    """
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if sample.name.endswith("_total") and name in wanted:
                totals[name] = totals.get(name, 0.0) + sample.value
    return totals


async def scrape(pool: EndpointPool, ep: Endpoint, wanted: Collection[str]) -> dict[str, float] | None:
    """The ``wanted`` counters of one server; None (with a warning) when it has none to give."""
    try:
        # a busy server may be slow to answer, which is no reason to send its work elsewhere
        response = await ep.client.get("/metrics", timeout=httpx.Timeout(min(30.0, pool.timeout), connect=min(QUICK_TIMEOUT_S, pool.timeout)))
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        pool.mark_down(ep, describe(exc))
        return None
    except httpx.HTTPError as exc:
        log.warning("could not read /metrics from the engine at %s: %s", ep.url, describe(exc))
        return None
    if response.status_code != 200:
        log.warning("the engine at %s answered /metrics with HTTP %d", ep.url, response.status_code)
        return None
    try:
        return prometheus_counters(response.text, wanted)
    except ValueError as exc:
        log.warning("the engine at %s answered /metrics with text that is not Prometheus's: %s", ep.url, exc)
        return None
