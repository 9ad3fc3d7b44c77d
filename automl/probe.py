"""Reachability checks for the services a search connects to, before anything is created.

Without them a wrong address costs minutes, not seconds: `ray.init(address=...)` retries the GCS
connection for well over 100 s, and MLflow's HTTP client retries a dead server with exponential
backoff for more than two minutes. One TCP connect (Ray) or one HTTP request (MLflow) with a short
timeout answers the question "is anything there?" and lets the command fail with one line that
says what to do.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0
# MLflow's own HTTP retry policy for this process (the user's values win): a server that goes away
# mid-search fails a call within about a minute instead of retrying with backoff for several.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def use_mlflow_http_defaults(uri: str | None) -> None:
    """MLflow's HTTP retry policy for this process when `uri` is an http(s) server (the user's values win)."""
    if uri and urlsplit(uri).scheme in ("http", "https"):
        for key, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)


class UnreachableError(ValueError):
    """A service named on the command line does not answer; the message says how to fix it."""


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `ray://host:port` as (host, port)."""
    text = address if "://" in address else f"tcp://{address}"
    parts = urlsplit(text)
    if not parts.hostname:
        raise UnreachableError(f"--address {address!r} is not host:port (for example 10.0.0.5:6379 or ray://10.0.0.5:10001)")
    try:
        port = parts.port or default_port
    except ValueError as err:
        raise UnreachableError(f"--address {address!r}: {err}") from None
    return parts.hostname, port


def check_ray_address(address: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast when `--address` names a host:port where nothing listens.

    ``auto`` (and no address) is left to Ray: it looks the cluster up itself, without retries.
    A ``ray://`` address is the Ray Client server (default port 10001); a plain ``host:port`` is
    the GCS (default port 6379). Only the TCP connection is tested, not the protocol.
    """
    if not address or address.strip().lower() in ("auto", "local"):
        return
    client = address.startswith("ray://")
    host, port = _host_port(address, 10001 if client else 6379)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as err:
        reason = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
    raise UnreachableError(
        f"Ray cluster at --address {address} does not answer ({host}:{port}: {reason} after at most {timeout:g} s); "
        f"start the cluster with `ray start --head` on that machine, check the address and port "
        f"(`ray status` on the head prints it), or drop --address to run on a local Ray"
    )


def check_tracking_uri(uri: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast when an http(s) MLflow tracking URI has no server behind it.

    Any HTTP answer (even 401/404) counts as alive: authentication and paths are MLflow's
    business. Other schemes (sqlite:, file:, databricks) are not probed. Also sets MLflow's
    HTTP retry defaults for this process (see MLFLOW_HTTP_DEFAULTS) unless the user set them.
    """
    if not uri or urlsplit(uri).scheme not in ("http", "https"):
        return
    use_mlflow_http_defaults(uri)
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # the server answered
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        reason = "timed out" if isinstance(reason, socket.timeout) else str(reason)
    raise UnreachableError(
        f"MLflow tracking server at --tracking-uri {uri} does not answer ({url}: {reason}); "
        f"start it (`mlflow server --host 127.0.0.1 --port PORT`), check the URI, "
        f"or drop --tracking-uri to use the embedded store (sqlite in the results folder)"
    )
