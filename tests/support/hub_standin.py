"""A loopback stand-in of the two Hugging Face hub routes a pinned download uses.

- ``GET /api/models/{repo}/revision/{revision}?blobs=True``: what
  ``HfApi.model_info(repo, revision=..., files_metadata=True)`` asks
  (huggingface_hub 2.4.0, hf_api.py ``model_info``: the path, and
  ``params["blobs"] = True`` for files_metadata). The answer has the fields
  ``ModelInfo.__init__`` reads: ``id``, ``sha``, ``siblings[]`` with
  ``rfilename``, ``size``, ``blobId`` and, for LFS files, ``lfs: {size,
  sha256, pointerSize}`` (the hub's model API, https://huggingface.co/docs/hub/api).
- ``GET /{repo}/resolve/{revision}/{path}``: the file itself (hf_hub_url's
  template ``{endpoint}/{repo_id}/resolve/{revision}/{filename}``), with Range
  support from ``HttpStandin``.

A private repo answers 401 on both without ``Authorization: Bearer TOKEN``.
blobId is what git and the hub give a blob: sha1 of ``"blob SIZE\\0" + content``;
for an LFS file it is the id of its pointer file, not of the content.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from tests.support.http_standin import HttpStandin, Served


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(f"blob {len(content)}\0".encode() + content).hexdigest()  # noqa: S324 (git's id)


def lfs_pointer(content: bytes) -> bytes:
    # the Git LFS pointer format, https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(content).hexdigest()}\n"
            f"size {len(content)}\n").encode()


@dataclass(frozen=True)
class HubRepo:
    repo: str
    commit: str  # 40 hex
    files: dict[str, bytes]
    lfs: frozenset[str]  # paths stored in LFS (they get a sha256)
    token: str | None = None  # a private repo: this bearer token is required
    # path -> the size the listing gives, for a file served as its first bytes only (a GGUF
    # header without its tensor data: what fit reads of a 40 GB file through range requests)
    listed_sizes: dict[str, int] = field(default_factory=dict)

    def siblings(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for path, content in sorted(self.files.items()):
            if path in self.lfs:
                pointer = lfs_pointer(content)
                size = self.listed_sizes.get(path, len(content))
                out.append({"rfilename": path, "size": size, "blobId": git_blob_id(pointer),
                            "lfs": {"size": size, "sha256": hashlib.sha256(content).hexdigest(),
                                    "pointerSize": len(pointer)}})
            else:
                out.append({"rfilename": path, "size": len(content), "blobId": git_blob_id(content)})
        return out


def api_path(repo: str, revision: str) -> str:
    return f"/api/models/{repo}/revision/{revision}"


def serve_repo(standin: HttpStandin, hub: HubRepo, cdn: HttpStandin | None = None, branch: str | None = None) -> None:
    """Put the repo's metadata and files on the stand-in (at the commit). With a cdn, LFS
    files answer 302 to it, as the hub sends them to its CDN with a signed URL (no token needed there).
    With a branch, the metadata answers at the branch name too, naming the commit in ``sha``
    (as the hub resolves a revision)."""
    require = ("Authorization", f"Bearer {hub.token}") if hub.token else None
    info = {"_id": "0" * 24, "id": hub.repo, "modelId": hub.repo, "sha": hub.commit, "private": hub.token is not None,
            "siblings": hub.siblings()}
    for revision in (hub.commit, *([branch] if branch else [])):
        standin.serve(api_path(hub.repo, revision),
                      Served(json.dumps(info).encode(), require=require, content_type="application/json"))
    # what the hub says for a private repo without a token / an unknown revision: the codes
    # huggingface_hub's hf_raise_for_status maps to RepositoryNotFoundError / RevisionNotFoundError
    standin.error_headers[f"/api/models/{hub.repo}/revision/{hub.commit}"] = {"X-Error-Code": "RepoNotFound"}
    standin.error_headers[f"/api/models/{hub.repo}/revision/"] = {"X-Error-Code": "RevisionNotFound"}
    for path, content in hub.files.items():
        resolve = f"/{hub.repo}/resolve/{hub.commit}/{path}"
        if cdn is not None and path in hub.lfs:
            where = cdn.serve(f"/cas/{hashlib.sha256(content).hexdigest()}", Served(content))
            standin.serve(resolve, Served(b"", require=require, redirect=where))
        else:
            standin.serve(resolve, Served(content, require=require))
