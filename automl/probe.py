"""Reachability checks for the services a search connects to, before anything is created.

Without them a wrong address costs minutes, not seconds: `ray.init(address=...)` retries the GCS
connection for well over 100 s, and MLflow's HTTP client retries a dead server with exponential
backoff for more than two minutes. One TCP connect (Ray) or one HTTP request (MLflow) with a short
timeout answers the question "is anything there?" and lets the command fail with one line that
says what to do. A Ray cluster with token authentication is asked the same way whether it accepts
this driver's token (`ray_auth_token`).
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
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


# Ray's token authentication (Ray >= 2.52; `ray start --head` turns it on when a token exists, and
# Ray >= 2.59's local ray.init() writes one to ~/.ray/auth_token): where a client finds the token, in
# Ray's own order of precedence, and the one line that says what to set.
RAY_TOKEN_HINT = ("set RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head node prints it) "
                  "or RAY_AUTH_TOKEN_PATH to a file that holds it")
RAY_DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")


class RayAuthError(ValueError):
    """The Ray cluster wants a token this driver cannot give; the message names what to set."""


def local_ray_token() -> tuple[str, str] | tuple[None, None]:
    """(where it came from, token) as Ray reads it here: RAY_AUTH_TOKEN, else the file named by
    RAY_AUTH_TOKEN_PATH (which must be readable: Ray aborts the process otherwise), else
    ~/.ray/auth_token; (None, None) when there is none."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return "RAY_AUTH_TOKEN", token
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else RAY_DEFAULT_TOKEN_FILE.expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        if named:
            reason = getattr(err, "strerror", None) or err
            raise RayAuthError(f"RAY_AUTH_TOKEN_PATH={named} cannot be read ({reason}): point it at the file that "
                               f"holds the Ray cluster's token, or {RAY_TOKEN_HINT}") from None
        return None, None
    if not token:
        if named:
            raise RayAuthError(f"RAY_AUTH_TOKEN_PATH={named} is empty: {RAY_TOKEN_HINT}")
        return None, None
    return (f"RAY_AUTH_TOKEN_PATH={named}" if named else str(RAY_DEFAULT_TOKEN_FILE)), token


def _gcs_rejects(address: str, token: str | None, timeout: float) -> bool | None:
    """Whether the GCS at `address` refuses a request with `token` (None: without one) as
    unauthenticated; None when that cannot be told (Ray's gRPC stubs missing, another error).

    One GetClusterId call, the first thing `ray.init` asks: Ray itself retries a refused token for
    20 s and then says only "Failed to connect"."""
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:
        return None
    host, port = _host_port(address, 6379)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # The header Ray's own client interceptor sends (ray._private.authentication).
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(target) as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout, metadata=metadata)
        except grpc.RpcError as err:
            return True if err.code() == grpc.StatusCode.UNAUTHENTICATED else None
    return False


def ray_auth_token(address: str | None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """The token to connect to the Ray cluster at `address` with, or None when none is needed.

    Ray connects to an explicit address without a token unless RAY_AUTH_MODE=token is set, and a
    cluster that wants one then fails after 20 s with "Failed to connect". Asked first: the GCS
    without a token, then with the one Ray would read here (`local_ray_token`); a cluster that
    refuses both raises :class:`RayAuthError` with one line that says what to set. Where the GCS
    cannot be asked (no grpcio), a token found here is used all the same: a cluster without
    authentication ignores it. RAY_AUTH_MODE set by the user is respected (disabled: no token is
    sent, and the error says to unset it; token: a token must be found).
    """
    if not address or address.strip().lower() in ("auto", "local") or address.startswith("ray://"):
        return None
    where = f"the Ray cluster at --address {address}"
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    rejects = True if mode == "token" else _gcs_rejects(address, None, timeout)
    if mode == "disabled" or rejects is False:
        if rejects:
            raise RayAuthError(f"{where} requires token authentication but RAY_AUTH_MODE=disabled is set here: "
                               f"unset RAY_AUTH_MODE and {RAY_TOKEN_HINT}")
        return None  # no token needed (or, disabled, none wanted)
    source, token = local_ray_token()
    if token is None:
        if rejects is None:
            return None  # cannot tell, and nothing to offer: ray.init decides
        looked = f"(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, {RAY_DEFAULT_TOKEN_FILE})"
        if mode == "token":
            raise RayAuthError(f"RAY_AUTH_MODE=token is set but no Ray token was found here {looked}: {RAY_TOKEN_HINT}")
        raise RayAuthError(f"{where} requires token authentication and no token was found here {looked}: "
                           f"{RAY_TOKEN_HINT}")
    if _gcs_rejects(address, token, timeout):
        raise RayAuthError(f"{where} rejected the token from {source}: {RAY_TOKEN_HINT}")
    return token


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
