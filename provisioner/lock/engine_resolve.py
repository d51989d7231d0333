"""``provision lock`` for ``install.engine``: ask where the engine comes from what it is now.

Run on the controller, once per lock; plan and apply then need none of it.

- PyPI: the project's page of the simple index in JSON, ``GET {PROVISION_PYPI_INDEX or
  https://pypi.org/simple}/NAME/`` with ``Accept: application/vnd.pypi.simple.v1+json``
  (PEP 691; ``size`` from PEP 700), the API pip itself reads, so any mirror that serves pip
  serves this. The file named ``NAME-VERSION.tar.gz`` (PEP 625) is the sdist; its ``url``
  (relative to the page), ``hashes.sha256`` and ``size`` are recorded. No sdist, two, or a
  yanked one (PEP 592) is refused.
- A URL without a sha256: the file is streamed once and hashed (sha256 and byte count); the
  reviewer of the lock sees what was fetched, and apply checks both.
- git: ``git ls-remote REPO REF`` lists the refs that match; an annotated tag shows its
  commit as ``refs/tags/REF^{}`` (git-ls-remote(1)), which wins over the tag object. A name
  that is both a branch and a tag is refused: say ``refs/tags/X`` or ``refs/heads/X``.
- A container tag: the OCI distribution API (https://github.com/opencontainers/distribution-spec,
  spec.md "Pulling manifests"): ``HEAD /v2/NAME/manifests/TAG`` with the manifest and index
  media types in ``Accept``; the digest is the ``Docker-Content-Digest`` header, else the
  sha256 of the body a GET returns. A 401 with ``WWW-Authenticate: Bearer realm=..,service=..,
  scope=..`` is answered with an anonymous token from the realm (the Docker registry token
  protocol, https://distribution.github.io/distribution/spec/auth/token/), as public images on
  Docker Hub and ghcr.io need. ``docker.io`` names are served by ``registry-1.docker.io``, and a
  one-part name there is ``library/NAME`` (Docker's reference normalisation).
  ``PROVISION_CONTAINER_REGISTRY`` (a base URL) sends every request to a mirror instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from provisioner.errors import ProvisionError
from provisioner.lock.engine import (
    Engine,
    EngineLock,
    PinnedFile,
    PinnedGit,
    PinnedImage,
    describe,
    from_data,
    image_name,
    to_data,
    wanted,
)
from provisioner.lock.wheels import resolve_venv
from provisioner.profile.install_section import ArchiveEngine, ContainerEngine, SourceEngine, VenvEngine

ENV_PYPI = "PROVISION_PYPI_INDEX"
ENV_REGISTRY = "PROVISION_CONTAINER_REGISTRY"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20
_MAX_JSON = 16 * 2**20  # a project's index page (vllm's lists a few thousand files) stays well below it
# the manifest kinds a tag can name: OCI index and manifest (image-spec media-types.md), and
# Docker's manifest list and v2 manifest (distribution's manifest-v2-2.md)
_ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                     "application/vnd.docker.distribution.manifest.list.v2+json",
                     "application/vnd.docker.distribution.manifest.v2+json"])


def resolve_engine(engine: Engine, *, pip_python: str | None = None) -> EngineLock:
    """What ``engine`` (one lock.engine.wanted names) is now, held to the rules a lock is read
    with (an index or a registry answered it: nothing unchecked gets written, printed or later
    into a script); ``pip_python``: the Python whose pip resolves a venv (default this one)."""
    found = _resolve(engine, pip_python or sys.executable)
    try:
        return from_data(to_data(found))
    except ValueError as exc:
        raise ProvisionError(f"{describe(engine)}: the answer cannot go into a lock: {exc}",
                             hint="the index or registry served something malformed; try again or use a mirror",
                             ) from None


def _resolve(engine: Engine, pip_python: str) -> EngineLock:
    if isinstance(engine, VenvEngine):
        return resolve_venv(engine, pip_python=pip_python)
    key = wanted(engine)
    assert key is not None, "an engine the profile pins itself needs no lock"
    if isinstance(engine, SourceEngine) and engine.pypi is not None:
        return _pypi_sdist(engine.pypi, key)
    if isinstance(engine, SourceEngine) and engine.git is not None and engine.ref is not None:
        return PinnedGit(engine.git, engine.ref, _git_commit(engine.git, engine.ref))
    if isinstance(engine, (SourceEngine, ArchiveEngine)) and engine.url is not None:
        sha256, size = _hash_url(engine.url)
        return PinnedFile(key, engine.url, sha256, size)
    assert isinstance(engine, ContainerEngine)
    return PinnedImage(engine.image, _image_digest(engine.image))


def _read_whole(response: Any, limit: int, url: str) -> bytes:
    """The body, refused when the connection ended before Content-Length or it passes ``limit``."""
    data = bytes(response.read(limit + 1))
    _check_length(response, len(data), url)
    if len(data) > limit:
        raise ProvisionError(f"{url}: more than {limit} bytes is not what was asked for")
    return data


def _check_length(response: Any, got: int, url: str) -> None:
    promised = response.headers.get("Content-Length")
    if promised is not None and promised.isdigit() and int(promised) != got:
        raise ProvisionError(f"{url}: the connection ended after {got} of {promised} bytes",
                             hint="a lock is never made from a partial answer: run `provision lock` again")


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "provision",  # noqa: S310 - https, a mirror, file://
                                                   **(headers or {})}, method=method)
    return urllib.request.urlopen(request, timeout=60)  # noqa: S310 - https, a loopback mirror or file://


def _pypi_sdist(pin: str, key: str) -> PinnedFile:
    name, version = pin.split("==", 1)
    base = (os.environ.get(ENV_PYPI) or "https://pypi.org/simple").rstrip("/")
    project = re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalisation
    url = f"{base}/{project}/"
    try:
        with _get(url, {"Accept": "application/vnd.pypi.simple.v1+json"}) as response:
            page = json.loads(_read_whole(response, _MAX_JSON, url))
    except urllib.error.HTTPError as exc:
        raise ProvisionError(f"{pin}: {url} answered HTTP {exc.code}",
                             hint="check the project's name on pypi.org" if exc.code == 404 else
                             f"check {ENV_PYPI} (a mirror's simple index)") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read {url} as a PEP 691 index page: {exc}",
                             hint=f"check the network or {ENV_PYPI} (a mirror's simple index)") from None
    files = page.get("files") if isinstance(page, dict) else None
    if not isinstance(files, list):
        raise ProvisionError(f"{url}: not a PEP 691 index page (no files list)",
                             hint=f"check {ENV_PYPI}: it must be a simple index that answers in JSON")
    sdists = [f for f in files if isinstance(f, dict) and _sdist_of(str(f.get("filename", ""))) == (project, version)]
    if len(sdists) != 1:
        raise ProvisionError(f"{pin}: {url} lists {len(sdists)} sdists of version {version}",
                             hint="check the version on pypi.org; or name the tarball with install.engine.url")
    sdist = sdists[0]
    if sdist.get("yanked"):
        reason = sdist["yanked"] if isinstance(sdist["yanked"], str) else "no reason given"
        raise ProvisionError(f"{pin}: the release is yanked on {base} ({reason[:200]!r})",
                             hint="pick another version (PEP 592: a yanked release is broken or withdrawn)")
    hashes, size, link = sdist.get("hashes"), sdist.get("size"), sdist.get("url")
    sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not (isinstance(link, str) and link and isinstance(sha256, str) and isinstance(size, int)
            and not isinstance(size, bool) and size > 0):
        raise ProvisionError(f"{url}: the sdist of {pin} has no url, sha256 or size (PEP 691, PEP 700)",
                             hint="name the tarball with install.engine.url; `provision lock` then hashes it")
    found = PinnedFile(key, urllib.parse.urljoin(url, link), sha256, size)
    if not found.url.startswith(("https://", "http://")) or not found.url.endswith("/" + str(sdist["filename"])):
        raise ProvisionError(f"{url}: the sdist's URL {found.url[:200]!r} does not name its file",
                             hint="the index served a malformed page; try again or use another mirror")
    return found


def _sdist_of(filename: str) -> tuple[str, str] | None:
    """(normalised name, version) of an sdist's file name (PEP 625: NAME-VERSION.tar.gz, older
    ones with '-' inside NAME), else None. A .zip sdist is left out: the build unpacks with tar."""
    if not filename.endswith(".tar.gz"):
        return None
    name, _, version = filename.removesuffix(".tar.gz").rpartition("-")
    return (re.sub(r"[-_.]+", "-", name).lower(), version) if name else None


def _hash_url(url: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    try:
        with _get(url) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
            _check_length(response, size, url)
    except urllib.error.HTTPError as exc:
        raise ProvisionError(f"cannot download {url}: HTTP {exc.code}",
                             hint="check install.engine.url; the lock hashes the file it serves") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ProvisionError(f"cannot download {url}: {exc}", hint="check install.engine.url and the network") from None
    if size == 0:
        raise ProvisionError(f"{url} served an empty file", hint="check install.engine.url")
    return digest.hexdigest(), size


def _git_commit(repository: str, ref: str) -> str:
    try:
        done = subprocess.run(["git", "ls-remote", "--", repository, ref, f"{ref}^{{}}"],
                              capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvisionError(f"git ls-remote {repository} failed: {exc}", hint="is git installed?") from None
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no output"])[0]
        raise ProvisionError(f"git ls-remote {repository}: {first}", hint="check install.engine.git and the network")
    refs: dict[str, str] = {}
    for line in done.stdout.splitlines():
        commit, _, name = line.partition("\t")
        refs[name] = commit
    # git matches a pattern against the refs' tails: refs/tags/b1 and refs/heads/b1 both match b1
    names = {n.removesuffix("^{}") for n in refs}
    if not names:
        raise ProvisionError(f"{repository} has no branch or tag {ref}", hint="check install.engine.ref")
    if len(names) > 1:
        raise ProvisionError(f"{ref} names {len(names)} refs in {repository}: {', '.join(sorted(names))}",
                             hint="give the full name, refs/tags/NAME or refs/heads/NAME")
    [full] = names
    commit = refs.get(full + "^{}") or refs[full]
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ProvisionError(f"git ls-remote {repository}: {commit[:80]!r} is not a 40-hex commit",
                             hint="a SHA-256 repository is not supported; pin commit: in the profile")
    return commit


def registry_of(image: str) -> tuple[str, str, str]:
    """NAME:TAG -> (registry host, repository, tag), as Docker normalises a reference."""
    name = image_name(image)
    tag = image[len(name) + 1:]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, rest
    else:
        host, repository = "docker.io", name
    if host == "docker.io" and "/" not in repository:
        repository = f"library/{repository}"
    return host, repository, tag


def _image_digest(image: str) -> str:
    host, repository, tag = registry_of(image)
    base = (os.environ.get(ENV_REGISTRY) or
            f"https://{'registry-1.docker.io' if host == 'docker.io' else host}").rstrip("/")
    url = f"{base}/v2/{repository}/manifests/{urllib.parse.quote(tag)}"
    headers = {"Accept": _ACCEPT}
    digest: str | None = None
    for attempt in range(2):
        try:
            with _get(url, headers, method="HEAD") as response:
                digest = response.headers.get("Docker-Content-Digest")
                break
        except urllib.error.HTTPError as exc:
            challenge = exc.headers.get("WWW-Authenticate", "") if exc.headers else ""
            if exc.code == 401 and attempt == 0 and challenge.lower().startswith("bearer "):
                headers["Authorization"] = f"Bearer {_anonymous_token(challenge, repository)}"
                continue
            hint = ("check the image's name and tag" if exc.code == 404 else
                    "a private image needs a registry login, which provision does not hold: pin "
                    "NAME@sha256:DIGEST in the profile (skopeo inspect shows it)")
            raise ProvisionError(f"{image}: {url} answered HTTP {exc.code}", hint=hint) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ProvisionError(f"cannot reach {url}: {exc}",
                                 hint=f"check the network or {ENV_REGISTRY} (a registry mirror)") from None
    if digest is None:
        try:
            with _get(url, headers) as response:
                digest = "sha256:" + hashlib.sha256(_read_whole(response, 4 * 2**20, url)).hexdigest()
        except (urllib.error.URLError, OSError) as exc:
            raise ProvisionError(f"{image}: GET {url} failed: {exc}",
                                 hint=f"check the network or {ENV_REGISTRY} (a registry mirror)") from None
    if not _DIGEST.match(digest):
        raise ProvisionError(f"{image}: the registry's digest {digest[:80]!r} is not sha256:<64 hex>",
                             hint="pin NAME@sha256:DIGEST in the profile (skopeo inspect shows it)")
    return digest


def _anonymous_token(challenge: str, repository: str) -> str:
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = fields.get("realm", "")
    if not realm.startswith(("https://", "http://")):
        raise ProvisionError(f"the registry's token realm {realm[:80]!r} is not a URL",
                             hint="pin NAME@sha256:DIGEST in the profile (skopeo inspect shows it)")
    query = {"service": fields.get("service", ""), "scope": fields.get("scope") or f"repository:{repository}:pull"}
    try:
        with _get(f"{realm}?{urllib.parse.urlencode(query)}") as response:
            answer = json.loads(response.read(1 << 20))
        token: Any = answer.get("token") or answer.get("access_token")
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
        raise ProvisionError(f"no anonymous token from {realm}: {exc}",
                             hint="a private image needs a login: pin NAME@sha256:DIGEST in the profile") from None
    if not isinstance(token, str) or not token:
        raise ProvisionError(f"{realm} gave no token", hint="pin NAME@sha256:DIGEST in the profile")
    return token
