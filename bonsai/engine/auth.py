"""API keys for ``bonsai serve`` and its clients: where a key comes from, when one is required.

The key itself is checked by vLLM (its ``VLLM_API_KEY`` / ``--api-key`` middleware; see
:mod:`bonsai.engine.adapter_guard` for the routes vLLM leaves open). Here: the one environment
variable every bonsai command reads (``BONSAI_API_KEY``), the rule that a server reachable from
other machines needs a key, and the error a client raises when a server refuses its key. The key is
never printed, logged or written to a file by bonsai.
"""

from __future__ import annotations

import ipaddress
import os

from bonsai.errors import ConfigError, EngineError

#: the variable every bonsai command takes its API key from when ``--api-key`` is not given
API_KEY_ENV = "BONSAI_API_KEY"

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def env_api_key() -> str | None:
    """The key in ``$BONSAI_API_KEY`` (None when unset or empty)."""
    return os.environ.get(API_KEY_ENV) or None


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or an interface address: other machines may reach it


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond this machine without a key: anything that reaches the port could
    generate, and load or replace adapters."""
    if api_key or is_loopback(host):
        return
    raise ConfigError(
        f"--host {host} makes the server reachable from other machines, and no API key is set",
        f"set one with {API_KEY_ENV}=KEY (or --api-key KEY) and give clients the same key, "
        "or serve on --host 127.0.0.1 (this machine only)",
    )


class EngineAuthError(EngineError):
    """A server refused the request's API key (HTTP 401): none was sent, or the wrong one."""


def unauthorized(url: str, *, sent_key: bool, flag: str = "--api-key") -> EngineAuthError:
    if sent_key:
        return EngineAuthError(
            f"the engine at {url} refused the API key (HTTP 401): the key sent is not the server's",
            f"pass the key the server was started with ({flag} KEY or {API_KEY_ENV}=KEY)",
        )
    return EngineAuthError(
        f"the engine at {url} needs an API key (HTTP 401) and none was sent",
        f"pass the key the server was started with: {flag} KEY or {API_KEY_ENV}=KEY",
    )
