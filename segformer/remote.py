"""Object storage for the spec's input paths: s3:// (and gs://, az://, http(s):// ...) through fsspec.

A dataset root, a calibration folder or a checkpoint may be given as a URL. :func:`localize`,
called by the config loader on every config it builds, copies each one into a local cache and
returns a config that names the copies, so every action reads local files, validated exactly as
local folders are. Nothing else in the toolkit knows about URLs.

- Cache: ``$SEGFORMER_REMOTE_CACHE``, else ``$XDG_CACHE_HOME/segformer/remote``, else
  ``~/.cache/segformer/remote``: one folder per URL, one sub-folder per content version. The
  version is a hash of the listing (each file's name, size and ETag / mtime, as fsspec reports
  them), so a copy is reused while the remote data is unchanged and a changed file fetches a new
  version. A download goes into a temporary folder renamed into place when complete, under a
  file lock, so two processes (two AutoML trials on one machine) never clash or read half a copy.
  Versions a run no longer uses are left in place (another process may still read them): delete
  the cache folder to reclaim the space.
- One listing per URL and process: later configs of the same process (every ``apply_overrides``,
  each promotion step) reuse the copy without contacting the storage. When the storage cannot be
  reached (no network, refused credentials) but a complete copy is cached, the newest one is used,
  with a warning naming the URL.
- A dataset root copies ``images/`` and ``masks/`` (TAO's layout), a folder its files, a file
  itself (an ``.onnx`` file with its external-data files, which must lie beside or below it and
  are fetched again when their size or ETag changes: ``side.json``).
- Messages name the URL the user gave: :class:`segformer.errors.SegformerError` replaces the local
  copy's path with the URL (:func:`as_given`), and :func:`urls_restored` writes URLs back into a
  dumped spec. A URL's query string (a presigned URL's signature, a credential until it expires) is
  written back into dumped specs only: messages, logs and the cache's names leave it out
  (:func:`redacted`); local files are named from the URL's path.
- ``localize(cfg, fetch_urls=False)`` (``load_config(..., fetch=False)``) keeps URLs as given and
  contacts nothing, for code that needs the settings only (the MLflow model reading its spec).
- Credentials are whatever the backend reads (for s3fs/botocore: ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws``; ``AWS_ENDPOINT_URL`` points at an
  S3-compatible server such as MinIO).

This module imports only the standard library at import time (the error classes use it).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

from segformer.fileio import staging_dir

log = logging.getLogger(__name__)

CACHE_ENV = "SEGFORMER_REMOTE_CACHE"

# The spec's input paths and what each names: "dataset" (a root holding images/ and masks/),
# "folder" (images), "file". A list-valued key holds several folders.
INPUTS: dict[str, str] = {
    "dataset.segment.root_dir": "dataset",
    "dataset.segment.quant_calibration_dataset.images_dir": "folder",
    "gen_trt_engine.tensorrt.calibration.cal_image_dir": "folder",
    "model.backbone.pretrained_backbone_path": "file",
    "train.pretrained_model_path": "file",
    "train.resume_training_checkpoint_path": "file",
    "evaluate.checkpoint": "file",
    "evaluate.trt_engine": "file",
    "inference.checkpoint": "file",
    "inference.trt_engine": "file",
    "export.checkpoint": "file",
    "quantize.model_path": "file",
    "gen_trt_engine.onnx_file": "file",
}
# Paths the actions write: local only.
OUTPUTS = (
    "results_dir", "train.results_dir", "evaluate.results_dir", "inference.results_dir", "export.results_dir",
    "export.onnx_file", "quantize.results_dir", "gen_trt_engine.results_dir", "gen_trt_engine.trt_engine",
    "gen_trt_engine.tensorrt.calibration.cal_cache_file",
)

# protocol -> (package, how to install it); other protocols get fsspec's own hint.
_BACKENDS = {
    "s3": ("s3fs", "pip install 'segformer-automl[s3]'"),
    "s3a": ("s3fs", "pip install 'segformer-automl[s3]'"),
    "gs": ("gcsfs", "pip install gcsfs"),
    "gcs": ("gcsfs", "pip install gcsfs"),
    "az": ("adlfs", "pip install adlfs"),
    "abfs": ("adlfs", "pip install adlfs"),
    "http": ("aiohttp", "pip install aiohttp requests"),
    "https": ("aiohttp", "pip install aiohttp requests"),
}
_CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, ~/.aws/credentials)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or gcloud's default credentials",
    "az": "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY",
}
_SINGLE_FILE_ONLY = ("http", "https")  # no reliable listing: files only

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_QUERY = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s?#'\"]*)[?#][^\s'\"]*")  # a URL, then its ?query / #fragment
_MANIFEST = "manifest.json"
_SIDE = "side.json"  # an ONNX model's external-data files: {location: version}
_DATA = "data"
# Fields of an fsspec info dict that change when the content changes, by backend: a hash of the content
# where the backend gives one (an identical object uploaded again is the same version), else times.
_CONTENT_FIELDS = ("ETag", "etag", "md5Hash", "content_md5", "Digest", "Content-MD5")
_TIME_FIELDS = ("LastModified", "last_modified", "mtime", "updated", "generation", "Last-Modified")

# Local copy -> the URL it was fetched from, in this process (see `as_given`).
_AS_GIVEN: dict[str, str] = {}
# (URL, kind) -> its local copy, in this process: the storage is listed once per URL.
_FETCHED: dict[tuple[str, str], Path] = {}


def is_url(value: Any) -> bool:
    """A string with a scheme (``s3://...``); ``file://`` URLs count as local paths."""
    match = _URL.match(value) if isinstance(value, str) else None
    return match is not None and match.group(1).lower() != "file"


def cache_root() -> Path:
    """Where remote data is copied: ``$SEGFORMER_REMOTE_CACHE`` or ``$XDG_CACHE_HOME/segformer/remote``."""
    own = os.environ.get(CACHE_ENV, "").strip()
    if own:
        return Path(own).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser() / "segformer" / "remote"


# --------------------------------------------------------------------------------------- the config
def localize(cfg: Any, fetch_urls: bool = True) -> Any:
    """``cfg`` with every remote input path replaced by its local copy (``cfg`` itself when it has none).

    With ``fetch_urls=False`` remote inputs are kept as given and nothing is contacted (settings only).
    Raises :class:`~segformer.config.ConfigError` with one line naming the key, the URL and the fix
    (a missing backend, missing data, refused credentials, an output path given as a URL).
    """
    from segformer.config.fields import ConfigError

    for key in OUTPUTS:
        value = _get(cfg, key)
        if is_url(value):
            raise ConfigError(f"{key}={redacted(value)}: outputs are written to local folders only; give a local "
                              f"path (copy the results to object storage afterwards, e.g. aws s3 sync)")

    def local(value: Any, key: str, kind: str) -> Any:
        if is_url(value):
            return str(fetch(value, key, kind)) if fetch_urls else value
        return _local(value)

    changes: dict[str, Any] = {}
    for key, kind in INPUTS.items():
        value = _get(cfg, key)
        new = [local(v, f"{key}[{i}]", kind) for i, v in enumerate(value)] if isinstance(value, list) else \
            local(value, key, kind)
        if new != value:
            changes[key] = new
    for key, value in changes.items():
        cfg = _replaced(cfg, key.split("."), value)
    return cfg


def urls_restored(values: Mapping[str, Any]) -> dict:
    """A plain config dict (``to_dict``) with local copies named by their URLs again (for a dumped spec)."""
    if not _AS_GIVEN:
        return dict(values)
    out = copy.deepcopy(dict(values))
    for key in INPUTS:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node[leaf]
        if isinstance(value, list):
            node[leaf] = [_AS_GIVEN.get(v, v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str):
            node[leaf] = _AS_GIVEN.get(value, value)
    return out


def as_given(text: str) -> str:
    """``text`` with every local copy made in this process (and paths inside it) named by its URL."""
    for local in sorted(_AS_GIVEN, key=len, reverse=True):
        if local in text:
            text = re.sub(re.escape(local) + r"(?![\w.\-])", lambda _m, u=redacted(_AS_GIVEN[local]): u, text)
    return text


def redacted(text: str) -> str:
    """``text`` with the query string and fragment of every URL in it left out (a presigned URL's
    signature is a credential): what messages, logs and the cache's folder names show."""
    return _QUERY.sub(r"\1", text)


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part, None)
    return cfg


def _replaced(obj: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    return dataclasses.replace(obj, **{parts[0]: _replaced(getattr(obj, parts[0]), parts[1:], value)})


def _is_file_url(value: Any) -> bool:
    return isinstance(value, str) and value[:7].lower() == "file://"


def _local(value: Any) -> Any:
    """A ``file://`` URL as a plain path; anything else unchanged."""
    if _is_file_url(value):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(value).path)
    return value


# ---------------------------------------------------------------------------------------- fetching
def fetch(url: str, key: str, kind: str) -> Path:
    """The local copy of ``url`` (fetched now unless the cache holds this version): a folder for
    ``kind`` "dataset" or "folder", the file for "file". ``key`` names the spec key in messages.
    Listed once per process; when the storage cannot be reached, the newest complete cached copy."""
    from segformer.config.fields import ConfigError

    known = _FETCHED.get((url, kind))
    if known is not None and known.exists():
        return known
    shown = redacted(url)
    fs, path, protocol = _filesystem(url, key)
    digest = hashlib.sha256(_identity(url).rstrip("/").encode()).hexdigest()[:12]  # its query too, but a signature
    home = cache_root() / protocol / f"{digest}-{_safe_name(shown)}"
    try:
        listing, single = _listing(fs, path, shown, key, kind, protocol)
    except Exception as exc:  # noqa: BLE001 - the backends' errors have no common base
        # An old copy stands in for storage that cannot be reached (offline), not for one that answered:
        # refused credentials are the user's to fix, and a copy could be another account's data.
        answered = isinstance(exc, (ConfigError, FileNotFoundError)) or _refused(exc)
        cached = None if answered else _newest_copy(home)
        if cached is None:
            with _reading(key, shown, protocol):
                raise  # as one ConfigError
        log.warning("%s=%s: cannot reach the storage (%s); using the copy fetched on %s", key, shown,
                    _first_line(exc), time.strftime("%Y-%m-%d %H:%M", time.localtime(cached[1])))
        return _remember(url, kind, cached[0])
    version = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16]
    entry = home / version
    local = entry / (next(iter(listing)) if single else _DATA)
    onnx = single and local.suffix.lower() == ".onnx"
    if onnx or not _complete(entry, listing):
        from filelock import FileLock

        try:
            home.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(home / f"{version}.lock"))
            with _waiting(lock, shown):
                if not _complete(entry, listing):
                    with _reading(key, shown, protocol):
                        _download(fs, path, shown, listing, entry, single)
                if onnx:
                    _fetch_onnx_side_files(fs, path, shown, key, protocol, local)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise ConfigError(f"{key}={shown}: cannot store the local copy in {home} ({exc.strerror or exc}); free "
                              f"disk space there or set {CACHE_ENV} to a folder on a disk with room") from None
    return _remember(url, kind, local)


def _remember(url: str, kind: str, local: Path) -> Path:
    """``local`` as the copy of ``url`` for the rest of this process (`fetch`, `as_given`)."""
    _FETCHED[(url, kind)] = local
    for name in {str(local), str(local.resolve())}:
        _AS_GIVEN[name] = url.rstrip("/")
    return local


def _newest_copy(home: Path) -> tuple[Path, float] | None:
    """The local copy in the newest complete version under ``home`` and when it was fetched; None if none."""
    found = []
    for manifest in home.glob(f"[!.]*/{_MANIFEST}"):  # not a download's temporary folder
        with contextlib.suppress(OSError):
            found.append((manifest.stat().st_mtime, manifest.parent))
    for fetched, entry in sorted(found, reverse=True):
        done = _complete(entry)
        if done:
            return entry / (done.get("base", _DATA) or next(iter(done["files"]))), fetched
    return None


def _filesystem(url: str, key: str) -> tuple[Any, str, str]:
    """(fsspec file system, path within it, protocol); a missing backend is one line saying what to install."""
    from segformer.config.fields import ConfigError

    protocol = _URL.match(url).group(1).lower()  # type: ignore[union-attr]
    shown = redacted(url)
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with torch and lightning
        raise ConfigError(f"{key}={shown}: reading {protocol}:// needs fsspec: pip install fsspec") from None
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        package, install = _BACKENDS.get(protocol, (None, str(exc)))
        needs = f"needs {package}: {install}" if package else f"needs a backend that is not installed ({install})"
        raise ConfigError(f"{key}={shown}: reading {protocol}:// {needs}") from None
    except ValueError:
        raise ConfigError(f"{key}={shown}: {protocol}:// is not a storage protocol fsspec knows; use s3://, gs://, "
                          f"az://, http(s):// or a local path") from None
    with _reading(key, shown, protocol):
        fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True)  # reads the environment now
    return fs, path.rstrip("/"), protocol


def _listing(fs: Any, path: str, url: str, key: str, kind: str, protocol: str) -> tuple[dict[str, list], bool]:
    """{relative path: [size, version fields]} of what to copy, and whether ``url`` is a single file
    (named from the URL's path: a query string is no part of a file name)."""
    from segformer.config.fields import ConfigError

    if kind == "file":
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise ConfigError(f"{key} points to {url}, which does not exist; check the bucket and the object "
                              f"name") from None
        if info.get("type") == "directory":
            raise ConfigError(f"{key}={url} is a folder in object storage; give the URL of the file in it (a "
                              f"results folder stands for its checkpoint only on a local disk)")
        return {PurePosixPath(urlsplit(url).path).name or "file": _version(info)}, True
    if protocol in _SINGLE_FILE_ONLY:
        raise ConfigError(f"{key}={url}: {protocol}:// can name single files only, and {key} is a folder; "
                          f"use s3://, gs://, az:// or a local folder")
    if kind == "dataset":
        found = {}
        for sub in ("images", "masks"):
            found.update(fs.find(f"{path}/{sub}", detail=True))
        if not any(_relative(name, path).startswith("images/") for name in found):
            from segformer.data.files import missing_folder_message

            raise ConfigError(f"{key}={url}: " + missing_folder_message(f"{url.rstrip('/')}/images"))
    else:
        found = fs.find(path, maxdepth=1, detail=True)
        if not found:
            # s3fs's find with a maxdepth answers refused credentials with nothing: ls raises them (the
            # caller says "access refused"), and tells a prefix of folders only from no prefix at all
            try:
                below = [e["name"] for e in fs.ls(path, detail=True) if e.get("type") == "directory"]
            except FileNotFoundError:
                below = []
            if below:
                names = ", ".join(sorted(PurePosixPath(str(n).rstrip("/")).name for n in below)[:5])
                raise ConfigError(f"{key}={url}: folder {url} holds folders only ({names}), no files; give the folder "
                                  f"that holds the files")
            raise ConfigError(f"{key}={url}: folder {url} does not exist (nothing is stored under that prefix); "
                              f"check the bucket and the prefix")
    return {_relative(name, path): _version(info) for name, info in found.items()
            if info.get("type", "file") == "file" and not _relative(name, path).endswith("/")}, False


def _relative(name: str, root: str) -> str:
    return name[len(root):].lstrip("/") if name.startswith(root) else name.rsplit("/", 1)[-1]


def _version(info: Mapping[str, Any]) -> list:
    """Size and content hash (ETag: re-uploading the same bytes, or a server's restart, changes its
    time only and fetched everything again), or size and times where the backend gives no hash."""
    hashes = [str(info[f]) for f in _CONTENT_FIELDS if info.get(f) is not None]
    return [info.get("size"), *(hashes or [str(info[f]) for f in _TIME_FIELDS if info.get(f) is not None])]


def _safe_name(url: str) -> str:
    return re.sub(r"[^\w.\-]", "_", url.rsplit("/", 1)[-1])[:40] or "root"


def _complete(entry: Path, listing: Mapping[str, list] | None = None) -> dict | None:
    """The manifest of ``entry`` if it holds this version (``listing``; None: the one it names)
    entirely: a finished download, its files still of the right size. None otherwise."""
    try:
        manifest = json.loads((entry / _MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if listing is not None and files != dict(listing):
            return None
        base = entry / manifest.get("base", _DATA)
        if all(size is None or (base / name).stat().st_size == size for name, (size, *_) in files.items()):
            return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _download(fs: Any, path: str, url: str, listing: Mapping[str, list], entry: Path, single: bool) -> None:
    """Copy every listed file into a temporary folder, then rename it to ``entry`` (the caller holds the lock)."""
    home = entry.parent
    _remove_stale(home, entry.name)
    if entry.exists():  # damaged or incomplete: replaced
        shutil.rmtree(entry)
    tmp = staging_dir(home, f".{entry.name}.", ".tmp")
    try:
        base = tmp if single else tmp / _DATA
        names = sorted(listing)
        sources = [path] if single else [f"{path}/{name}" for name in names]
        targets = [base / name for name in names]
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        total = sum(size or 0 for size, *_ in listing.values())
        log.info("fetching %s (%d file(s), %.1f MB) into %s", url, len(names), total / 1e6, entry)
        fs.get(sources, [str(t) for t in targets], callback=_progress(url, len(names)))
        for name, target in zip(names, targets):
            size = listing[name][0]
            if size is not None and target.stat().st_size != size:
                raise OSError(errno.EIO, f"{url}/{name} changed while it was copied; run again")
        manifest = {"url": url, "base": "" if single else _DATA, "files": dict(listing)}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fetch_onnx_side_files(fs: Any, path: str, url: str, key: str, protocol: str, model: Path) -> None:
    """An ONNX model's external-data files (large models keep weights beside the graph), next to its
    copy ``model``; fetched again when their version changes (new weights, same graph). The caller
    holds the version's lock."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    from segformer.config.fields import ConfigError

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - not a readable ONNX file: the action that reads it says so
        return
    locations = sorted({item.value for tensor in graph.initializer if uses_external_data(tensor)
                        for item in tensor.external_data if item.key == "location"})
    entry, record = model.parent, model.parent / _SIDE
    try:
        known = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    parent, shown_parent = path.split("?", 1)[0].rsplit("/", 1)[0], url.rsplit("/", 1)[0]
    versions = {}
    for location in locations:
        target = entry / location
        if not target.resolve().is_relative_to(entry.resolve()):
            raise ConfigError(f"{key}={url}: the model keeps its weights in {location!r}, outside its own folder; "
                              f"only external-data files beside the .onnx file (or below it) are fetched: save the "
                              f"model with a relative location such as {Path(location).name!r}")
        with _reading(key, f"{shown_parent}/{location}", protocol):
            versions[location] = version = _version(fs.info(f"{parent}/{location}"))
            if version == known.get(location) and target.is_file() and version[0] in (None, target.stat().st_size):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(target.parent, target.name)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                fs.get_file(f"{parent}/{location}", str(tmp))
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
    if versions != known:
        record.write_text(json.dumps(versions, indent=1) + "\n", encoding="utf-8")


def _remove_stale(folder: Path, name: str) -> None:
    """Temporary copies of ``name`` in ``folder`` left by a download killed half-way (the caller holds the lock)."""
    for stale in folder.glob(f".{name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _progress(url: str, files: int) -> Any:
    """A progress bar for copies of many files on a terminal (fsspec's tqdm callback); none otherwise."""
    from fsspec.callbacks import DEFAULT_CALLBACK, TqdmCallback

    if files < 20:
        return DEFAULT_CALLBACK
    return TqdmCallback(tqdm_kwargs={"desc": f"fetching {url}", "unit": "file", "disable": None})


@contextlib.contextmanager
def _waiting(lock: Any, url: str) -> Iterator[None]:
    """Hold ``lock``, saying so when another process is copying the same data."""
    from filelock import Timeout

    try:
        lock.acquire(timeout=1)
    except Timeout:
        log.warning("another process is fetching %s into the same cache; waiting for it", url)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _reading(key: str, url: str, protocol: str) -> Iterator[None]:
    """Errors of the storage backend -> one ConfigError naming the key, the URL and what to check."""
    from segformer.config.fields import ConfigError

    try:
        yield
    except ConfigError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) or (
                exc.filename and str(exc.filename).startswith(str(cache_root()))):
            raise  # the local disk, not the storage: `fetch` says so
        raise ConfigError(_read_failure(key, url, protocol, exc)) from None
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp/google errors have no common base
        raise ConfigError(_read_failure(key, url, protocol, exc)) from None


def _first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type when it has none), without URL query strings."""
    return redacted((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:300]


_SIGNED = re.compile(r"^(x-amz-|x-goog-)|^(awsaccesskeyid|googleaccessid|signature|expires)$", re.IGNORECASE)
_SAS = {"sv", "ss", "srt", "sp", "se", "st", "spr", "sig", "sr", "si", "sdd", "ses", "skoid", "sktid", "skt", "ske",
        "sks", "skv"}  # an Azure shared access signature's fields (with "sig")


def _identity(url: str) -> str:
    """``url`` without a presigned URL's signature (AWS, Google, Azure SAS), which changes with every
    signing: a checkpoint signed anew each day was downloaded each day into a cache folder of its own.
    The rest of the query stays (it may choose the content: ?versionId=...)."""
    from urllib.parse import parse_qsl, urlencode

    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    sas = any(k == "sig" for k, _ in pairs)
    kept = [(k, v) for k, v in pairs if not _SIGNED.match(k) and not (sas and k in _SAS)]
    return parts._replace(query=urlencode(kept)).geturl()


def _refused(exc: BaseException) -> bool:
    """Whether the storage (or the client) refused the credentials, or there are none: s3fs raises
    PermissionError, gcsfs an OSError "Forbidden" or an HttpError with code 401/403, Azure an
    HttpResponseError with status_code 401/403."""
    chain = list(_chain(exc))
    names = {type(e).__name__ for e in chain}
    codes = {v for e in chain for attr in ("code", "status", "status_code") if isinstance(v := getattr(e, attr, None), int)}
    return (isinstance(exc, PermissionError) or bool(codes & {401, 403})
            or any(str(e).startswith(("Forbidden", "Unauthorized")) for e in chain)
            or bool(names & {"NoCredentialsError", "PartialCredentialsError", "ClientAuthenticationError", "RefreshError"}))


def _read_failure(key: str, url: str, protocol: str, exc: BaseException) -> str:
    text = _first_line(exc)
    credentials = _CREDENTIALS.get({"s3a": "s3", "gcs": "gs", "abfs": "az"}.get(protocol, protocol))
    if isinstance(exc, FileNotFoundError):
        return f"{key} points to {url}, which does not exist ({text}); check the bucket and the name"
    if _refused(exc):
        how = f"set {credentials}" if credentials else "check the credentials"
        return f"{key}={url}: no credentials or access refused ({text}); {how} and check the bucket's permissions"
    where = " (AWS_ENDPOINT_URL: " + os.environ["AWS_ENDPOINT_URL"] + ")" if protocol in ("s3", "s3a") and \
        os.environ.get("AWS_ENDPOINT_URL") else ""
    return f"{key}={url}: cannot read it{where}: {type(exc).__name__}: {text}; check the URL, the network and the credentials"


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    for _ in range(6):
        if exc is None:
            return
        yield exc
        exc = exc.__cause__ or exc.__context__
