"""A CMake source build (llama.cpp, ik_llama.cpp) at a pinned tarball or commit.

Inputs (source, sha256/commit, subdir, CMake options, targets) are hashed into
the versioned dir ``PATH-<12 hex>``; the stable ``PATH`` is a symlink to it,
switched atomically (see venv.py), so a changed input rebuilds and an unchanged
one does nothing. The build happens in a scratch dir beside it; the target
binaries are copied to ``DIR/bin``, the log is kept as ``DIR/build.log`` (or
``DIR.failed.log`` when it fails), and the stamp is written last.

CUDA: llama.cpp's CMake switch is ``GGML_CUDA`` and the GPU generations are
CMake's ``CMAKE_CUDA_ARCHITECTURES``, a ``;`` list of compute capabilities
without the dot (checked in llama.cpp's docs/build.md at commit
00fd518151fe962fe5d7ad7892b6cf1b38d971ae, "CUDA" > "Override Compute Capability
Specifications": ``cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="86;89"``).
CMake's own flags (``-S``, ``-B``; ``--build DIR -j N --target T...``) as cmake 3.25.1's
``cmake --help`` and ``cmake --build`` list them (Debian 12).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from provisioner.facts.check import Check
from provisioner.install import InstallKind
from provisioner.install.venv import VersionedDir, stamp_text, write_stamp


def q(text: str) -> str:
    return shlex.quote(text)


def cuda_options(compute_capabilities: list[str]) -> list[str]:
    """Catalog compute capabilities ("12.0", "8.9") -> llama.cpp's CMake options.

    No GPU: CPU only. CMake's architecture names drop the dot: 12.0 -> 120."""
    if not compute_capabilities:
        return ["-DGGML_CUDA=OFF"]
    archs = sorted({cc.replace(".", "") for cc in compute_capabilities}, key=int)
    return ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}"]


@dataclass(frozen=True)
class Build(VersionedDir):
    path: str  # the stable link, e.g. /opt/provision/builds/llama.cpp
    url: str | None = None  # tarball: https://, file://, or a path on the host
    sha256: str | None = None
    git: str | None = None
    commit: str | None = None
    subdir: str | None = None
    cmake_options: tuple[str, ...] = ()
    targets: tuple[str, ...] = ("llama-server",)
    jobs: int = 2
    label: str = "build"
    version: str = ""  # what the plan calls it, e.g. "llama.cpp b11312"

    @property
    def name(self) -> str:
        return f"build:{self.label}"

    @property
    def kind(self) -> InstallKind:
        return "build"

    @property
    def inputs(self) -> dict[str, Any]:
        # jobs is not an input: it changes how fast, not what is built
        return {"url": self.url, "sha256": self.sha256, "git": self.git, "commit": self.commit,
                "subdir": self.subdir, "cmake_options": list(self.cmake_options), "targets": list(self.targets)}

    @property
    def summary(self) -> str:
        pin = (self.sha256 or "")[:12] if self.url else (self.commit or "")[:12]
        return f"{self.version or self.label} ({pin}, {self.digest})"

    def verify_probe(self, root: str) -> str:
        """verify: each target binary is there and executable behind the link."""
        return "\n".join(f"if [ -x {q(root + self.path + '/bin/' + t)} ]; then "
                         f"echo {q(f'@install {self.name} bin.{t} yes')}; fi" for t in self.targets)

    def verify_checks(self, found: dict[str, str]) -> list[Any]:
        return [Check(f"install.{self.name}.{t}", "pass" if found.get(f"bin.{t}") == "yes" else "fail",
                      f"{self.path}/bin/{t}", "an executable",
                      None if found.get(f"bin.{t}") == "yes" else "the build's binary is gone: remove the "
                      "build's stamp and apply to rebuild") for t in self.targets]

    def _fetch(self) -> list[str]:
        if self.git:
            return [
                "git init -q \"$w/src\"",
                f"git -C \"$w/src\" fetch -q --depth 1 {q(self.git)} {q(self.commit or '')} >>\"$log\" 2>&1 "
                f"|| fail 'git fetch of {self.commit} failed'",
                "git -C \"$w/src\" checkout -q FETCH_HEAD >>\"$log\" 2>&1 || fail 'git checkout failed'",
                "top=\"$w/src\""]
        url = self.url or ""
        if url.startswith("file://"):
            get = f"cp {q(url.removeprefix('file://'))} \"$w/src.tar\""
        else:
            get = f"curl -fsSL --retry 3 -o \"$w/src.tar\" {q(url)}"
        return [
            f"{get} >>\"$log\" 2>&1 || fail 'could not fetch {url}'",
            f"[ \"$(sha256sum < \"$w/src.tar\" | cut -c1-64)\" = {q(self.sha256 or '')} ] "
            f"|| fail 'sha256 of {url} differs from the profile'",
            "mkdir \"$w/src\"",
            "tar -xf \"$w/src.tar\" -C \"$w/src\" >>\"$log\" 2>&1 || fail 'could not unpack the tarball'",
            "rm -f \"$w/src.tar\"",
            # a tarball mostly holds one top folder: build inside it
            "set -- \"$w/src\"/*",
            "if [ $# = 1 ] && [ -d \"$1\" ]; then top=$1; else top=\"$w/src\"; fi"]

    def build_script(self) -> str:
        d = '"$root"' + q(self.directory)
        source = '"$top"' + (f"/{q(self.subdir)}" if self.subdir else "")
        options = " ".join(q(o) for o in self.cmake_options)
        copies = "\n".join(
            f"if [ -f \"$w/build/bin/{t}\" ]; then cp \"$w/build/bin/{t}\" {d}/bin/{q(t)}; "
            f"elif [ -f \"$w/build/{t}\" ]; then cp \"$w/build/{t}\" {d}/bin/{q(t)}; "
            f"else fail {q(f'the build made no {t}')}; fi" for t in self.targets)
        return "\n".join([
            f"rm -rf {d}  # no stamp: a build that died, start over",
            f"mkdir -p {d}/bin",
            f"w=$(mktemp -d {d}.work.XXXXXX)",
            "log=\"$w/build.log\"",
            f"fail() {{ cp \"$log\" \"$root\"{q(self.directory + '.failed.log')} 2>/dev/null || true; "
            f"echo \"@error {self.name}: $1 (log: {self.directory}.failed.log)\"; rm -rf \"$w\" {d}; exit 1; }}",
            *self._fetch(),
            f"cmake -S {source} -B \"$w/build\" -DCMAKE_BUILD_TYPE=Release {options} >>\"$log\" 2>&1 "
            "|| fail 'cmake configure failed'",
            f"cmake --build \"$w/build\" -j {self.jobs} --target "
            + " ".join(q(t) for t in self.targets)
            + " >>\"$log\" 2>&1 || fail 'cmake build failed'",
            copies,
            f"cp \"$log\" {d}/build.log",
            "rm -rf \"$w\"",
            write_stamp(self.directory, stamp_text(self.digest, self.summary, self.inputs)),
        ])
