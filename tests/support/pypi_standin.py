"""A loopback stand-in of a Python package index, serving generated distributions.

Served on an ``HttpStandin`` (Range, wrong bytes, a request log), for each file:

- the PEP 503 simple index: ``/simple/`` lists the projects, ``/simple/<normalized
  name>/`` links each file as ``<a href="../../files/F#sha256=HEX">F</a>`` (PEP 503: the
  name normalized with ``re.sub(r"[-_.]+", "-", name).lower()``; the URL fragment
  ``#sha256=`` is how an index gives a file's hash);
- PyPI's JSON API ``/pypi/<name>/<version>/json``: ``info`` and ``urls``, one entry per
  file with the fields https://docs.pypi.org/api/json/ documents for a release's files
  (``filename``, ``url``, ``packagetype`` "sdist" or "bdist_wheel", ``python_version``,
  ``requires_python``, ``size``, ``digests`` with ``md5`` and ``sha256``, ``yanked``);
- the file itself at ``/files/<filename>``.

``wheel`` builds a small real wheel (PEP 427: ``NAME-VERSION.dist-info/`` with
METADATA, WHEEL and RECORD, the RECORD's hashes urlsafe-base64 sha256 without padding),
``py3-none-any``, byte-for-byte the same on every call; ``sdist`` a source tarball pip
can name but, with ``--only-binary=:all:``, never installs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
import zipfile
from dataclasses import dataclass

from tests.support.http_standin import HttpStandin, Served

_EPOCH = (2020, 1, 1, 0, 0, 0)  # every zip entry's time: the same bytes every call


def normalized(name: str) -> str:
    """PEP 503's normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Dist:
    name: str  # the project's name as its metadata spells it
    version: str
    filename: str
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def packagetype(self) -> str:
        return "bdist_wheel" if self.filename.endswith(".whl") else "sdist"


def wheel(name: str, version: str, requires: tuple[str, ...] = ()) -> Dist:
    """A pure-Python wheel of one module that knows its version, depending on ``requires``."""
    stem = re.sub(r"[-_.]+", "_", name)  # the wheel spec's escaped distribution name
    info = f"{stem}-{version}.dist-info"
    files = {
        f"{stem}/__init__.py": f'VERSION = "{version}"\n'.encode(),
        f"{info}/METADATA": ("Metadata-Version: 2.1\n"
                             f"Name: {name}\nVersion: {version}\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: provision-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},sha256={_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(zipfile.ZipInfo(path, _EPOCH), data)
    return Dist(name, version, f"{stem}-{version}-py3-none-any.whl", buffer.getvalue())


def sdist(name: str, version: str) -> Dist:
    """A source tarball with a PKG-INFO (the index has no wheel of it)."""
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        entry = tarfile.TarInfo(f"{stem}/PKG-INFO")
        entry.size, entry.mtime = len(data), 1577836800
        archive.addfile(entry, io.BytesIO(data))
    return Dist(name, version, f"{stem}.tar.gz", buffer.getvalue())


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def serve_index(standin: HttpStandin, dists: list[Dist]) -> str:
    """Serve the files, their simple pages and JSON API; the simple index's URL."""
    projects: dict[str, list[Dist]] = {}
    for dist in dists:
        projects.setdefault(normalized(dist.name), []).append(dist)
        standin.serve(f"/files/{dist.filename}", Served(dist.content))
    for project, files in projects.items():
        links = "".join(f'<a href="../../files/{d.filename}#sha256={d.sha256}">{d.filename}</a><br/>\n'
                        for d in files)
        standin.serve(f"/simple/{project}/", _html(f"Links for {project}", links))
        for version in {d.version for d in files}:
            release = [d for d in files if d.version == version]
            standin.serve(f"/pypi/{project}/{version}/json", Served(_release_json(standin, release),
                                                                    content_type="application/json"))
    listing = "".join(f'<a href="{p}/">{p}</a><br/>\n' for p in sorted(projects))
    standin.serve("/simple/", _html("Simple index", listing))
    return standin.url("/simple")


def _html(title: str, body: str) -> Served:
    page = f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>\n{body}</body></html>\n"
    return Served(page.encode(), content_type="text/html")


def _release_json(standin: HttpStandin, release: list[Dist]) -> bytes:
    first = release[0]
    urls = [{"filename": d.filename, "url": standin.url(f"/files/{d.filename}"), "packagetype": d.packagetype,
             "python_version": "py3" if d.packagetype == "bdist_wheel" else "source", "requires_python": None,
             "size": len(d.content), "yanked": False, "yanked_reason": None,
             "digests": {"md5": hashlib.md5(d.content).hexdigest(), "sha256": d.sha256}}  # noqa: S324 (PyPI's md5)
            for d in release]
    return json.dumps({"info": {"name": first.name, "version": first.version}, "urls": urls}).encode()
