"""Read a model's shape from the Hub once: the listing, config.json, and the headers of
its weight files through HTTP range requests; the record goes to the cache.

The Hub serves a file's first bytes to ``Range: bytes=0-N`` (its own viewer reads GGUF
metadata so: https://huggingface.co/docs/hub/gguf), so a 100 GB model costs a few
megabytes per shard. The listing (``model_info(files_metadata=True)``, as
``install/hf.py`` asks it) gives every shard's size, so a quant's bytes are the sum
of its files. What is read here is kept under the cache directory
(``profile/model_source.py``): plan, apply and validate never ask again.
"""

from __future__ import annotations

import fnmatch
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from provisioner.catalog import load_catalog
from provisioner.errors import ProvisionError
from provisioner.facts.weights_header import BadHeader, Truncated, parse_gguf, parse_safetensors
from provisioner.install.hf import hub_endpoint, hub_offline, list_repo
from provisioner.install.token import controller_token
from provisioner.profile.model_source import (
    gguf_record,
    hub_key,
    hub_target,
    own_record,
    safetensors_record,
    save_record,
)
from provisioner.profile.models import Profile

_FIRST_RANGE = 4 * 2**20
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def needs_fetch(profile: Profile) -> bool:
    """The profile's model (or quant) is not in the catalog and not read yet."""
    model = load_catalog().models.get(profile.model.id)
    if model is not None:
        quant = model.quants.get(profile.model.quant)
        gguf = bool(profile.model.source.files) or (profile.model.source.hf is not None
                                                    and (profile.model.source.hf.file or "").endswith(".gguf"))
        if quant is not None and (quant.format == "gguf" or not gguf):
            return False
    if hub_target(profile) is None:
        return False
    return own_record(profile) is None


def fetch_model_shape(profile: Profile, *, endpoint: str | None = None, token: str | None = None) -> bool:
    """Read the shape from the Hub when needed; True when it did."""
    if not needs_fetch(profile):
        return False
    if token is None:
        token = controller_token(profile.secrets.hf_token)  # a gated repo's listing; never written anywhere
    target = hub_target(profile)
    assert target is not None
    repo, revision, file = target
    base = hub_endpoint(endpoint)
    if hub_offline():
        raise ProvisionError(f"{profile.model.id} {profile.model.quant} is read from {repo} on the Hub, and "
                             "HF_HUB_OFFLINE is set", hint="read it once with network access (`provision fit`), "
                             "or point model.source at local files")
    listing = list_repo(repo, revision, base, token)
    commit = str(listing["commit"])
    sizes = {str(f["path"]): int(f["size"]) for f in listing["files"]}

    def read(path: str, parse: Callable[[bytes], Any]) -> Any:
        return _read_header(f"{base}/{quote(repo, safe='/')}/resolve/{commit}/{quote(path, safe='/')}", parse, token)

    web = f"https://huggingface.co/{repo}/tree/{commit}"
    shards = gguf_files(sizes, profile.model.quant, file)
    if shards:
        headers = [read(p, parse_gguf) for p in shards]
        record = gguf_record(headers, [sizes[p] for p in shards], name=profile.model.id, repo=repo,
                             files=f"{repo}/{shards[0]}" + (f" (+{len(shards) - 1} shards)" if len(shards) > 1 else ""),
                             sources=[web, *(f"https://huggingface.co/{repo}/blob/{commit}/{p}" for p in shards[:1])])
    elif "config.json" in sizes and any(p.endswith(".safetensors") for p in sizes):
        config = json.loads(_get(f"{base}/{quote(repo, safe='/')}/resolve/{commit}/config.json", token, None))
        weights = sorted(p for p in sizes if p.endswith(".safetensors") and "/" not in p)
        tensors = [t for p in weights for t in read(p, parse_safetensors)]
        record = safetensors_record(config, tensors, [sizes[p] for p in weights], name=profile.model.id, repo=repo,
                                    source=f"config.json and safetensors headers of {repo}@{commit[:12]}",
                                    sources=[f"https://huggingface.co/{repo}/blob/{commit}/config.json", web])
    else:
        gguf = sorted(p for p in sizes if p.endswith(".gguf"))
        raise ProvisionError(
            f"{repo}@{revision}: no GGUF file for quant {profile.model.quant!r} and no config.json + safetensors",
            hint=("GGUF files there: " + ", ".join(gguf[:8]) + ("..." if len(gguf) > 8 else "")) if gguf
            else "is it a model repo? name the quant as in the file names (e.g. Q4_K_M, UD-Q4_K_XL) or a glob")
    save_record(hub_key(repo, revision, profile.model.quant, file), record)
    return True


def gguf_files(sizes: dict[str, int], quant: str, first: str | None) -> list[str]:
    """The shards of one quant: the profile's file and its siblings, else the .gguf files
    named for the quant (``Model-Q4_K_M.gguf``, ``UD-Q4_K_XL/Model-UD-Q4_K_XL-00001-of-00003.gguf``)
    or matching the quant as a glob; projectors (mmproj) are never weights."""
    files = [p for p in sizes if p.endswith(".gguf") and "mmproj" not in PurePosixPath(p).name.lower()]
    if first is not None:
        shard = _SHARD.search(first)
        if shard is None:
            return [first] if first in sizes else []
        stem = first[:shard.start()]
        return sorted(p for p in files if p.startswith(stem) and re.fullmatch(r"-\d{5}-of-\d{5}\.gguf", p[len(stem):]))
    if any(c in quant for c in "*?["):
        return sorted(p for p in files if fnmatch.fnmatch(p, quant))
    return sorted(p for p in files if _quant_of(p).lower() == quant.lower())


def _quant_of(path: str) -> str:
    """The quant a GGUF's file name ends with: the part after the model name."""
    name = _SHARD.sub(".gguf", PurePosixPath(path).name).removesuffix(".gguf")
    folder = PurePosixPath(path).parent.name
    if folder and name.lower().endswith(folder.lower()):
        return folder
    match = re.search(r"[-.]((?:UD-)?(?:I?Q\d\w*|BF16|F16|F32|MXFP4\w*|TQ\d\w*))$", name, re.IGNORECASE)
    return match.group(1) if match else ""


def _get(url: str, token: str | None, end: int | None) -> bytes:
    headers = {"User-Agent": "provision"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if end is not None:
        headers["Range"] = f"bytes=0-{end - 1}"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - https or a loopback mirror
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return bytes(response.read(end) if end is not None else response.read())
    except urllib.error.HTTPError as exc:
        raise ProvisionError(f"{url}: HTTP {exc.code}",
                             hint="a gated or private repo needs the profile's hf_token") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ProvisionError(f"cannot read {url}: {exc}", hint="check the network or HF_ENDPOINT") from None


def _read_header(url: str, parse: Callable[[bytes], Any], token: str | None) -> Any:
    size = _FIRST_RANGE
    while True:
        data = _get(url, token, size)
        try:
            return parse(data)
        except Truncated as short:
            if len(data) < size:
                raise ProvisionError(f"{url}: the file ends inside its header") from None
            size = max(size * 2, short.need + 2**20)
        except BadHeader as exc:
            raise ProvisionError(f"{url}: {exc}") from None
