"""The engine behind one or more OpenAI-compatible vLLM servers (``bonsai serve``, or any ``vllm serve``).

Requests go over HTTP through the ``openai`` SDK, so a debate can run on a laptop against a GPU box.
Adapters are addressed by their content-hash name (the same one every engine uses) and loaded on
the servers at run time when they are new, so a freshly trained version is used without a restart
and never under an old name. No vLLM import.

A sweep spreads its debates over several servers, so one server dying must not stop it: an endpoint
that cannot be reached, or whose connection drops, is marked down and skipped; a request that had
streamed nothing yet moves to another endpoint on its own, and one that had streamed part of its
answer fails with :class:`~bonsai.errors.EndpointUnreachable` so the caller re-runs it (elsewhere,
since the endpoint is down). A down endpoint is probed again after a cool-down and used again once
it answers.

One module a job: ``pool`` (the endpoints and their health), ``wire`` (requests and streams through
the SDK), ``adapters`` (loading adapters at run time), ``tokens`` (``/tokenize``), ``metrics``
(``/metrics``), ``failures`` (HTTP failures as bonsai errors) and ``engine`` (the facade).
"""

from bonsai.engine.openai.engine import OpenAIEngine
from bonsai.engine.openai.pool import normalize_endpoint

__all__ = ["OpenAIEngine", "normalize_endpoint"]
