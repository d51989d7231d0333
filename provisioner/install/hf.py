"""A Hugging Face repo at a pinned revision -> the exact files to download, on the controller.

``resolve_hf`` asks the hub (or a mirror: an explicit endpoint, else
``HF_ENDPOINT``) for the repo's files at the revision with their metadata
(``model_info(files_metadata=True)``, i.e. ``GET /api/models/{repo}/revision/{rev}?blobs=True``),
keeps those matching the include globs (huggingface_hub's own
``filter_repo_objects``: fnmatch, ``*`` crosses ``/``, as ``allow_patterns``),
and returns one ``RemoteFile`` per file with url ``{endpoint}/{repo}/resolve/{commit}/{path}``.

Checksums: an LFS file (every weight file) carries its sha256 in the metadata.
A small non-LFS file (config.json, tokenizer files) carries only its git blob
id; the download snippet checks that one instead (sha1 of ``"blob SIZE\\0"`` +
content, the id git and the hub give the file), so every file is verified.
Only when a mirror lists neither is the size the check (``sha256 == ""``,
``git_blob == ""``).

The answer is cached on the controller under ``cache_dir`` keyed by endpoint,
repo, revision and include: a 40-hex revision never changes, so plan, apply and
verify ask the network once. With ``HF_HUB_OFFLINE`` set only the cache is
used (huggingface_hub's own switch: https://huggingface.co/docs/huggingface_hub/package_reference/environment_variables).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from provisioner.errors import ProvisionError
from provisioner.install.download import RemoteFile

DEFAULT_ENDPOINT = "https://huggingface.co"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub.utils._runtime: what counts as set


def hub_endpoint(endpoint: str | None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def header_line(token: str) -> str:
    """The content of the header file curl reads (-H @file): the token, never on a command line."""
    if not token or any(ord(c) < 33 or ord(c) == 127 for c in token):
        raise ProvisionError("the Hugging Face token is empty or holds blanks or control characters",
                             hint="check the secret the profile names for it")
    return f"Authorization: Bearer {token}\n"


def _cache_file(cache_dir: Path, endpoint: str, repo: str, revision: str, include: list[str]) -> Path:
    key = json.dumps([endpoint, repo, revision, sorted(include)])
    return cache_dir / "hf-resolved" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def _query_hub(repo: str, revision: str, include: list[str], endpoint: str, token: str | None) -> dict[str, Any]:
    """One GET to the hub: {"commit": sha, "files": [{path, size, sha256, git_blob}]}."""
    # huggingface_hub (and its HTTP stack) loads only when a repo is resolved
    from huggingface_hub import HfApi  # noqa: PLC0415
    from huggingface_hub.errors import (  # noqa: PLC0415
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils._paths import filter_repo_objects  # noqa: PLC0415

    where = f"{repo}@{revision} on {endpoint}"
    try:
        # token=False: only the profile's token is used, never one saved on the controller,
        # so plan and apply (which sends the profile's token in the header file) see the same repo
        info = HfApi(endpoint=endpoint).model_info(repo, revision=revision, files_metadata=True,
                                                   token=token or False, timeout=60)
    except GatedRepoError:
        raise ProvisionError(f"{where} is gated: the token has no access",
                             hint="accept the model's terms on the hub, then give the profile a token") from None
    except RevisionNotFoundError:
        raise ProvisionError(f"{where}: no such revision", hint="pin a commit sha the repo has") from None
    except RepositoryNotFoundError:
        raise ProvisionError(f"{where}: no such repo, or it is private",
                             hint="check the name; a private repo needs a token in the profile's secrets") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            raise ProvisionError(f"{where}: the hub refused access (HTTP {status})",
                                 hint="give the profile a token that can read the repo") from None
        raise ProvisionError(f"{where}: the hub answered HTTP {status}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # the HTTP client's own errors (connection refused, TLS, timeout)
        raise ProvisionError(f"cannot reach {endpoint} for {repo}@{revision}: {exc}",
                             hint="check the network or HF_ENDPOINT (a lock or a model's files are read "
                                  "from the hub once; after that plan and apply need no network)") from None
    files = []
    for sibling in filter_repo_objects(info.siblings or [], allow_patterns=include or None,
                                       key=lambda s: s.rfilename):
        lfs = sibling.lfs
        size = lfs.size if lfs is not None else sibling.size
        if size is None:
            raise ProvisionError(f"{where}: the hub lists no size for {sibling.rfilename}",
                                 hint="a mirror must answer /api/models/.../revision/...?blobs=True with sizes")
        files.append({"path": sibling.rfilename, "size": size,
                      "sha256": lfs.sha256 if lfs is not None else "",
                      "git_blob": (sibling.blob_id or "") if lfs is None else ""})
    commit = info.sha or (revision if re.fullmatch(r"[0-9a-f]{40}", revision) else "")
    if not commit:
        raise ProvisionError(f"{where}: the hub did not say which commit {revision} is",
                             hint="a mirror must answer /api/models/REPO/revision/REV with its sha; "
                                  "or pin model.source.hf.revision to a 40-hex commit")
    return {"commit": commit, "files": files}


def list_repo(repo: str, revision: str, endpoint: str, token: str | None) -> dict[str, Any]:
    """Every file of the repo at the revision: {"commit": sha, "files": [{path, size, ...}]}."""
    return _query_hub(repo, revision, [], endpoint, token)


def _check_repo_path(repo: str, path: str) -> None:
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or ".." in parts or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ProvisionError(f"{repo}: the hub listed an unsafe file name {path!r}",
                             hint="provision only writes files inside the model's dest")


def cached_listing(repo: str, revision: str, include: list[str], *, endpoint: str | None,
                   cache_dir: Path) -> dict[str, Any] | None:
    """The listing an earlier plan cached for repo@revision, read without the network; only for
    a 40-hex revision, whose files never change (a branch's cache may be stale)."""
    cache = _cache_file(cache_dir, hub_endpoint(endpoint), repo, revision, include)
    if not _COMMIT.match(revision) or not cache.is_file():
        return None
    try:
        listing: dict[str, Any] = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    return listing


def resolve_hf(repo: str, revision: str, include: list[str], dest: str, *, endpoint: str | None,
               token: str | None, cache_dir: Path) -> tuple[RemoteFile, ...]:
    """The files of repo@revision matching include, as RemoteFiles under dest."""
    base = hub_endpoint(endpoint)
    cache = _cache_file(cache_dir, base, repo, revision, include)
    listing: dict[str, Any] | None = None
    if cache.is_file() and (_COMMIT.match(revision) or hub_offline()):
        try:
            listing = json.loads(cache.read_text())
        except (OSError, ValueError):
            listing = None  # a torn cache file: ask again (or fail below when offline)
    if listing is None:
        if hub_offline():
            raise ProvisionError(f"HF_HUB_OFFLINE is set and {repo}@{revision} (include {include}) "
                                 f"was never resolved on this controller",
                                 hint="run plan once with the network, or unset HF_HUB_OFFLINE")
        listing = _query_hub(repo, revision, include, base, token)
        cache.parent.mkdir(parents=True, exist_ok=True)
        temp = cache.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(listing, indent=1, sort_keys=True) + "\n")
        temp.replace(cache)
    if not listing["files"]:
        raise ProvisionError(f"no file of {repo}@{revision} matches include {include}",
                             hint="patterns are fnmatch globs over the repo's paths, e.g. 'Q4_K_M/*'")
    return remote_files(repo, listing["commit"], listing["files"], dest, endpoint=endpoint)


def remote_files(repo: str, commit: str, files: list[dict[str, Any]], dest: str, *,
                 endpoint: str | None) -> tuple[RemoteFile, ...]:
    """Listed files ({path, size, sha256, git_blob}) of repo@commit as RemoteFiles under dest."""
    base = hub_endpoint(endpoint)
    out = []
    for f in files:
        _check_repo_path(repo, f["path"])
        # as huggingface_hub's hf_hub_url builds it (file_download.py), without its import-time ENDPOINT
        url = f"{base}/{repo}/resolve/{quote(commit, safe='')}/{quote(f['path'])}"
        out.append(RemoteFile(url=url, dest=f"{dest.rstrip('/')}/{f['path']}", size=int(f["size"]),
                              sha256=f["sha256"], git_blob=f["git_blob"]))
    return tuple(out)


def list_files(repo: str, revision: str, include: list[str], *, endpoint: str | None,
               token: str | None) -> dict[str, Any]:
    """What repo@revision (a branch, tag or commit) is now: {"commit", "files"}; never cached
    (a branch moves): `provision lock` records the answer."""
    if hub_offline():
        raise ProvisionError(f"HF_HUB_OFFLINE is set: cannot ask the hub what {repo}@{revision} is",
                             hint="unset HF_HUB_OFFLINE to make or renew a lock")
    return _query_hub(repo, revision, include, hub_endpoint(endpoint), token)
