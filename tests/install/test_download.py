"""Downloads and release archives, run for real: the probe and the apply snippet
are executed by sh against temp trees, fetching from loopback stand-ins
(tests/support/http_standin.py, tests/support/hub_standin.py) with the host's real curl/wget,
sha256sum, df and tar."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.errors import ProvisionError
from provisioner.install import InstallChange, parse_install_lines
from provisioner.install.download import Archive, Download, RemoteFile
from provisioner.install.hf import header_line, resolve_hf
from tests.support.http_standin import HttpStandin, Served
from tests.support.hub_standin import HubRepo, api_path, serve_repo

SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def blob(n: int, seed: int = 1) -> bytes:
    """n reproducible bytes that do not repeat early (a shifted block would not match)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Host:
    """A temp 'host': a --root tree, a state dir, and sh to run probes and snippets in."""

    def __init__(self, base: Path, path: str | None = None) -> None:
        self.root = str(base / "root")
        self.state = str(base / "state")
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.state, exist_ok=True)
        self.env = dict(os.environ)
        if path is not None:
            self.env["PATH"] = path

    def sh(self, snippet: str) -> subprocess.CompletedProcess[str]:
        # as apply runs them (apply.py _install): $root and $state set, the snippet in a subshell
        # that is an if condition, where sh ignores set -e: the snippet must check every step itself
        script = (f"set -eu\nroot='{self.root}'\nstate='{self.state}'\n"
                  f"if ( set -eu\n{snippet}\n); then exit 0; else exit $?; fi\n")
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=self.env, timeout=120,
                              check=False)

    def found(self, item: Download | Archive) -> dict[str, str]:
        probe = self.sh(item.probe(self.root))
        assert probe.returncode == 0, probe.stderr
        return parse_install_lines(probe.stdout).of(item.name)

    def change(self, item: Download | Archive) -> InstallChange | None:
        return item.change(self.found(item), self.root)

    def apply(self, item: Download | Archive) -> subprocess.CompletedProcess[str]:
        change = self.change(item)
        assert change is not None, "nothing to do"
        return self.sh(change.script)

    def path(self, dest: str) -> Path:
        return Path(self.root + dest)


@pytest.fixture
def http() -> Iterator[HttpStandin]:
    with HttpStandin() as standin:
        yield standin


def no_curl_path(tmp_path: Path) -> str:
    """A PATH with every tool of this host except curl (so the snippet falls back to wget)."""
    bin_dir = tmp_path / "bin-no-curl"
    bin_dir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name != "curl" and not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(os.path.join(d, name))
    return str(bin_dir)


def one_file(http: HttpStandin, data: bytes, dest: str = "/srv/models/m.gguf", **served: object) -> Download:
    url = http.serve("/files/m.gguf", Served(data, **served))  # type: ignore[arg-type]
    return Download("model:m", (RemoteFile(url, dest, len(data), sha(data)),))


# --- resume, checksum, second run ---------------------------------------------------------------

def test_dropped_connection_resumes_and_the_second_run_is_a_no_op(tmp_path: Path, http: HttpStandin) -> None:
    data = blob(300_000)
    item = one_file(http, data, drop_after=120_000)
    host = Host(tmp_path)
    change = host.change(item)
    assert change is not None and change.action == "download" and change.bytes == len(data)
    assert change.summary == "1 file, 293.0 KiB"
    result = host.sh(change.script)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "@install-ok model:m" in result.stdout
    assert f"@progress model:m {len(data)} {len(data)}" in result.stdout
    assert host.path("/srv/models/m.gguf").read_bytes() == data
    assert not host.path("/srv/models/m.gguf.provision-part").exists()
    first, second = http.to("/files/m.gguf")
    assert (first.start, first.sent) == (0, 120_000)
    # it resumed: asked from where the drop left it, and fetched only the rest
    assert second.start == 120_000 and second.status == 206 and second.sent == len(data) - 120_000
    # the stamp makes the next gather see "done" without hashing
    assert host.change(item) is None
    # apply run again anyway (a plan from before): no request, nothing changes
    rerun = host.sh(item.script(host.root))
    assert rerun.returncode == 0 and "@install-ok" in rerun.stdout
    assert len(http.requests) == 2


def test_a_staged_partial_lives_in_the_stage_dir_and_resumes_from_there(tmp_path: Path, http: HttpStandin) -> None:
    """part_name puts the partial in $stage (Ollama: nothing foreign in blobs/, which its server
    prunes at start); the probe finds it in $state/downloads, and the next run resumes it."""
    data = blob(200_000, seed=9)
    url = http.serve("/files/b", Served(data, drop_after=80_000))
    guard = 'echo "@guard $(ls "$root/srv/blobs" 2>/dev/null | tr "\\n" " ")"'
    item = Download("model:b", (RemoteFile(url, "/srv/blobs/b", len(data), sha(data), part_name="b.part"),),
                    stage='stage="$state/downloads"')
    host = Host(tmp_path)
    dropped = host.sh(item.script(host.root, guard=guard).replace("[ \"$tries\" -le 5 ]", "[ \"$tries\" -le 1 ]"))
    assert dropped.returncode != 0 and "still incomplete" in dropped.stdout
    part = Path(host.state) / "downloads/b.part"
    assert part.stat().st_size == 80_000 and os.listdir(host.path("/srv/blobs")) == []
    assert host.found(item)["part.0"] == "80000"
    done = host.sh(item.script(host.root, guard=guard))
    assert done.returncode == 0, done.stdout + done.stderr
    assert host.path("/srv/blobs/b").read_bytes() == data and not part.exists()
    assert os.listdir(host.path("/srv/blobs")) == ["b"]
    # the guard ran before the first write and again before the rename: blobs/ was empty both times
    assert done.stdout.count("@guard \n") == 2
    assert http.to("/files/b")[-1].start == 80_000
    with pytest.raises(ProvisionError, match="needs the stage sh"):
        Download("model:b", (RemoteFile(url, "/srv/blobs/b", 1, "0" * 64, part_name="b.part"),))


def test_an_apply_killed_mid_download_resumes_on_the_next_run(tmp_path: Path, http: HttpStandin) -> None:
    data = blob(400_000, seed=6)
    item = one_file(http, data, chunk_delay=0.05)
    host = Host(tmp_path)
    change = host.change(item)
    assert change is not None
    script = f"root='{host.root}'\nstate='{host.state}'\nif ( set -eu\n{change.script}\n); then :; else exit 1; fi\n"
    run = subprocess.Popen(["sh", "-c", script], stdout=subprocess.DEVNULL, start_new_session=True)
    part = host.path("/srv/models/m.gguf.provision-part")
    deadline = time.monotonic() + 30
    while (not part.exists() or part.stat().st_size < 100_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the shell, curl and the ticker: a power cut for the download
    run.wait()
    got = part.stat().st_size
    assert 100_000 <= got < len(data) and not host.path("/srv/models/m.gguf").exists()
    change = host.change(item)
    assert change is not None and change.bytes == len(data) - got
    http.files["/files/m.gguf"].chunk_delay = 0
    result = host.sh(change.script)
    assert result.returncode == 0, result.stdout + result.stderr
    assert host.path("/srv/models/m.gguf").read_bytes() == data
    # The killed request may be logged after the resumed one (its server thread finishes its
    # slow send late), so find the resumed request by its start, not by its place in the log.
    resumed = [r for r in http.requests if r.start > 0]
    assert [(r.start, r.sent) for r in resumed] == [(got, len(data) - got)]


def test_wget_resumes_when_curl_is_missing(tmp_path: Path, http: HttpStandin) -> None:
    data = blob(200_000, seed=2)
    item = one_file(http, data, drop_after=50_000)
    host = Host(tmp_path, path=no_curl_path(tmp_path))
    result = host.apply(item)
    assert result.returncode == 0, result.stdout + result.stderr
    assert host.path("/srv/models/m.gguf").read_bytes() == data
    agents = {r.headers.get("user-agent", "").split("/")[0] for r in http.requests}
    assert agents == {"Wget"}
    assert [r.start for r in http.requests] == [0, 50_000]


def test_wrong_bytes_are_refused_and_nothing_is_left(tmp_path: Path, http: HttpStandin) -> None:
    data = blob(100_000, seed=3)
    item = one_file(http, data, wrong=True)
    host = Host(tmp_path)
    result = host.apply(item)
    assert result.returncode != 0
    assert "@error model:m: /srv/models/m.gguf: checksum mismatch" in result.stdout
    assert not host.path("/srv/models/m.gguf").exists()
    assert not host.path("/srv/models/m.gguf.provision-part").exists()
    assert not list(Path(host.state, "downloads").iterdir())


def test_http_error_fails_at_once_naming_the_status(tmp_path: Path, http: HttpStandin) -> None:
    item = Download("model:m", (RemoteFile(http.url("/nope.gguf"), "/srv/m.gguf", 10, sha(b"x" * 10)),))
    result = Host(tmp_path).apply(item)
    assert result.returncode != 0
    assert "HTTP 404" in result.stdout
    assert len(http.requests) == 1


def test_a_touched_file_is_rechecked_in_place_not_fetched(tmp_path: Path, http: HttpStandin) -> None:
    data = blob(50_000, seed=4)
    item = one_file(http, data)
    host = Host(tmp_path)
    assert host.apply(item).returncode == 0
    os.utime(host.path("/srv/models/m.gguf"), (1_000_000, 1_000_000))
    change = host.change(item)
    assert change is not None and change.bytes == 0
    assert change.summary == "1 to re-check by checksum (48.8 KiB)"
    assert host.sh(change.script).returncode == 0
    assert host.change(item) is None
    assert len(http.requests) == 1  # only the first download


def test_a_corrupted_file_is_fetched_again(tmp_path: Path, http: HttpStandin) -> None:
    data = blob(50_000, seed=5)
    item = one_file(http, data)
    host = Host(tmp_path)
    assert host.apply(item).returncode == 0
    target = host.path("/srv/models/m.gguf")
    target.write_bytes(b"\0" * len(data))  # same size, other bytes, no stamp match
    result = host.apply(item)
    assert result.returncode == 0, result.stdout
    assert target.read_bytes() == data
    assert len(http.requests) == 2


# --- shards as a set ----------------------------------------------------------------------------

def test_shards_are_put_in_place_only_as_a_set(tmp_path: Path, http: HttpStandin) -> None:
    shards = [blob(40_000 + i, seed=10 + i) for i in range(3)]
    files = tuple(RemoteFile(http.serve(f"/s/{i}", Served(d, wrong=i == 1)), f"/srv/q/m-0000{i + 1}-of-00003.gguf",
                             len(d), sha(d)) for i, d in enumerate(shards))
    item = Download("model:q", files)
    host = Host(tmp_path)
    change = host.change(item)
    assert change is not None and change.summary == f"3 files, {(3 * 40_000 + 3) / 1024:.1f} KiB"
    failed = host.sh(change.script)
    assert failed.returncode != 0 and "m-00002-of-00003.gguf: checksum mismatch" in failed.stdout
    # the first shard was fetched and checked, but no shard of a broken set is in place
    assert not [p.name for p in host.path("/srv/q").iterdir() if p.name.endswith(".gguf")]
    assert host.path("/srv/q/m-00001-of-00003.gguf.provision-part").stat().st_size == 40_000
    http.files["/s/1"].wrong = False
    change = host.change(item)
    assert change is not None and change.summary.endswith("(39.1 KiB already there)")
    result = host.sh(change.script)
    assert result.returncode == 0, result.stdout + result.stderr
    for f, d in zip(files, shards, strict=True):
        assert host.path(f.dest).read_bytes() == d
    # shard 1 was complete: not asked for again; 3 was never reached before
    assert [r.path for r in http.requests] == ["/s/0", "/s/1", "/s/1", "/s/2"]
    assert host.change(item) is None


# --- disk space ---------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs): df reports its true free space."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_not_enough_space_is_refused_before_a_byte_is_written(tmp_path: Path, small_fs: Path,
                                                              http: HttpStandin) -> None:
    big, small = blob(1_500_000, seed=20), blob(1_000_000, seed=21)
    # both on the small filesystem (the root tree is the mount): 2.4 MiB into 2 MiB
    files = (RemoteFile(http.serve("/a", Served(big)), "/m/a.gguf", len(big), sha(big)),
             RemoteFile(http.serve("/b", Served(small)), "/m/b.gguf", len(small), sha(small)))
    host = Host(tmp_path)
    host.root = str(small_fs)
    result = host.apply(Download("model:big", files))
    assert result.returncode != 0
    assert (f"@error model:big: not enough space on the filesystem of {small_fs}: need 2.4 MiB, 2.0 MiB free "
            "(short by 393.4 KiB)") in result.stdout
    assert list(small_fs.iterdir()) == []  # not even the directory
    assert http.requests == []
    # one file fits: it downloads
    fits = host.apply(Download("model:small", files[1:]))
    assert fits.returncode == 0, fits.stdout


# --- the header file (a token) ------------------------------------------------------------------

def test_the_token_reaches_the_server_through_the_header_file_only(tmp_path: Path, http: HttpStandin) -> None:
    token = "hf_secretTOKEN123"  # noqa: S105 (a test token)
    data = blob(10_000, seed=30)
    url = http.serve("/private.gguf", Served(data, require=("Authorization", f"Bearer {token}")))
    header_file = tmp_path / "hf-header"
    header_file.write_text(header_line(token))
    header_file.chmod(0o600)
    item = Download("model:p", (RemoteFile(url, "/srv/p.gguf", len(data), sha(data)),), header_file=str(header_file))
    host = Host(tmp_path)
    change = host.change(item)
    assert change is not None and token not in change.script and token not in repr(change.record)
    result = host.sh(change.script)
    assert result.returncode == 0, result.stdout + result.stderr
    assert http.requests[-1].headers["authorization"] == f"Bearer {token}"
    # without the header file the server refuses, and the snippet says so
    anonymous = Download("model:p", item.files)
    result = host.sh(anonymous.script(str(tmp_path / "other-root")))
    assert result.returncode != 0 and "HTTP 401" in result.stdout
    # a header file that is not there: one clear line, nothing fetched
    missing = Download("model:p", item.files, header_file=str(tmp_path / "no$(id)-header"))
    result = Host(tmp_path / "h3").sh(missing.script(str(tmp_path / "h3")))
    assert result.returncode != 0
    assert result.stdout == f"@error model:p: cannot read the header file {tmp_path}/no$(id)-header\n"
    # wget would forward the header on redirects: with a header file, no curl is an error
    result = Host(tmp_path / "h2", path=no_curl_path(tmp_path)).apply(item)
    assert result.returncode != 0 and "@error model:p: the host has no curl to download with" in result.stdout


def test_why_wget_gets_no_token_it_forwards_it_on_a_redirect(tmp_path: Path) -> None:
    """The reason a header file needs curl: this host's wget sends the header to the redirect's host."""
    with HttpStandin() as hub, HttpStandin() as cdn:
        target = cdn.serve("/blob", Served(b"hello"))
        source = hub.serve("/resolve", Served(b"", redirect=target))
        header = "Authorization: Bearer T"
        subprocess.run(["wget", "-q", f"--header={header}", "-O", str(tmp_path / "w"), source], check=True)
        subprocess.run(["curl", "-sfL", "-H", header, "-o", str(tmp_path / "c"), source], check=True)
    wget_at_cdn, curl_at_cdn = cdn.requests
    assert wget_at_cdn.headers.get("authorization") == "Bearer T"
    assert "authorization" not in curl_at_cdn.headers


def test_header_line_refuses_a_token_that_could_inject_a_header() -> None:
    with pytest.raises(ProvisionError, match="blanks or control"):
        header_line("abc\r\nX-Evil: 1")


# --- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "dest", "message"), [
    ("ftp://x/y", "/srv/a", "not an http"),
    ("http://x/a b", "/srv/a", "not an http"),
    ("http://x/y", "srv/a", "not a clean absolute"),
    ("http://x/y", "/srv/../etc/passwd", "not a clean absolute"),
    ("http://x/y", "/srv/a\nb", "not a clean absolute"),
])
def test_bad_urls_and_paths_are_refused(url: str, dest: str, message: str) -> None:
    with pytest.raises(ProvisionError, match=message):
        RemoteFile(url, dest, 1, "0" * 64)


def test_probe_never_fails_the_gather(tmp_path: Path) -> None:
    item = Download("model:m", (RemoteFile("http://127.0.0.1:9/x", "/nowhere/x", 5, "0" * 64),))
    host = Host(tmp_path)
    host.state = str(tmp_path / "no-such-state")
    probe = host.sh(item.probe("/no/such/root"))
    assert probe.returncode == 0
    assert probe.stdout == "@install model:m file.0 missing\n"


# --- shellcheck ---------------------------------------------------------------------------------

def test_snippets_and_probes_pass_sh_n_and_shellcheck(tmp_path: Path) -> None:
    files = (RemoteFile("https://example.invalid/a b'c/x.gguf".replace(" ", "%20"), "/srv/it's/x.gguf", 5,
                        "0" * 64),
             RemoteFile("file:///mirror/y.json", "/srv/it's/y.json", 3, "", git_blob="1" * 40))
    items: list[Download | Archive] = [
        Download("model:m", files), Download("model:h", files, header_file="/etc/provision/hf header"),
        Archive("engine:ollama", "https://example.invalid/ollama-linux-amd64.tar.zst", "a" * 64, 10,
                "/opt/provision/ollama", strip_components=1)]
    for i, item in enumerate(items):
        for kind, text in (("probe", item.probe("/mnt/image")), ("script", item.script("/mnt/image"))):
            path = tmp_path / f"{i}-{kind}.sh"
            # as the gather/apply wrap them; $root/$state are set by the caller
            path.write_text(f"#!/bin/sh\nset -eu\nroot=/mnt/image\nstate=/var/lib/provision\n"
                            f"export root state\n( set -eu\n{text}\n)\n")
            subprocess.run(["sh", "-n", str(path)], check=True)
            subprocess.run([SHELLCHECK, "-s", "sh", str(path)], check=True)


# --- archives -----------------------------------------------------------------------------------

def tarball(files: dict[str, bytes], top: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(top + name)
            info.size, info.mode = len(content), 0o755
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def archive(http: HttpStandin, path: str, data: bytes, **kw: object) -> Archive:
    return Archive("engine:ollama", http.serve(path, Served(data)), sha(data), len(data),
                   "/opt/provision/ollama", **kw)  # type: ignore[arg-type]


def test_archive_unpacks_beside_the_old_and_switches_the_link(tmp_path: Path, http: HttpStandin) -> None:
    # the Ollama layout (bin/ollama, lib/ollama/...; https://docs.ollama.com/linux.md), here in a top dir
    v1 = tarball({"bin/ollama": b"#!/bin/sh\necho 0.1\n", "lib/ollama/libggml.so": blob(5000)}, top="dist/")
    v2 = tarball({"bin/ollama": b"#!/bin/sh\necho 0.2\n", "lib/ollama/libggml.so": blob(6000)}, top="dist/")
    host = Host(tmp_path)
    one = archive(http, "/v1.tgz", v1, strip_components=1)
    change = host.change(one)
    assert change is not None and change.action == "install" and change.bytes == len(v1)
    result = host.sh(change.script)
    assert result.returncode == 0, result.stdout + result.stderr
    link = host.path("/opt/provision/ollama")
    assert os.readlink(link) == one.version_dir.rsplit("/", 1)[1]
    assert (link / "bin/ollama").read_bytes() == b"#!/bin/sh\necho 0.1\n"
    assert host.change(one) is None
    two = archive(http, "/v2.tgz", v2, strip_components=1)
    change = host.change(two)
    assert change is not None and change.action == "upgrade" and f"(was ollama-{sha(v1)[:12]})" in change.summary
    assert host.sh(change.script).returncode == 0
    assert (link / "bin/ollama").read_bytes() == b"#!/bin/sh\necho 0.2\n"
    assert host.path(one.version_dir).is_dir()  # the old version stays for a rollback
    assert not list(host.path("/opt/provision").glob("*.provision-*"))
    assert host.change(two) is None
    # back to the first version (a profile rolled back): only the link moves, nothing is fetched
    asked = len(http.requests)
    change = host.change(one)
    assert change is not None and change.action == "switch" and change.bytes == 0
    assert host.sh(change.script).returncode == 0
    assert (link / "bin/ollama").read_bytes() == b"#!/bin/sh\necho 0.1\n" and len(http.requests) == asked
    assert host.change(one) is None


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd (tar calls it to unpack .tar.zst)")
def test_archive_in_ollamas_tar_zst_format_unpacks(tmp_path: Path, http: HttpStandin) -> None:
    # Ollama's Linux release is ollama-linux-amd64.tar.zst (https://docs.ollama.com/linux.md); the part
    # file's name says nothing of the format, so tar must tell zstd from the content
    plain = tarball({"bin/ollama": b"#!/bin/sh\necho zst\n"})
    tar = tmp_path / "o.tar"
    with tarfile.open(tar, "w") as out, tarfile.open(fileobj=io.BytesIO(plain)) as source:
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member))
    subprocess.run(["zstd", "-q", str(tar), "-o", str(tmp_path / "o.tar.zst")], check=True)
    item = archive(http, "/ollama-linux-amd64.tar.zst", (tmp_path / "o.tar.zst").read_bytes())
    host = Host(tmp_path)
    result = host.apply(item)
    assert result.returncode == 0, result.stdout + result.stderr
    assert host.path("/opt/provision/ollama/bin/ollama").read_bytes() == b"#!/bin/sh\necho zst\n"


def test_archive_with_a_wrong_checksum_changes_nothing(tmp_path: Path, http: HttpStandin) -> None:
    data = tarball({"bin/ollama": b"x"})
    item = Archive("engine:ollama", http.serve("/o.tgz", Served(data, wrong=True)), sha(data), len(data),
                   "/opt/provision/ollama")
    host = Host(tmp_path)
    result = host.apply(item)
    assert result.returncode != 0 and "checksum mismatch" in result.stdout
    assert not host.path("/opt/provision/ollama").exists()
    assert [p.name for p in host.path("/opt/provision").iterdir()] == []


def test_archive_refuses_a_dest_it_did_not_make(tmp_path: Path, http: HttpStandin) -> None:
    host = Host(tmp_path)
    host.path("/opt/provision/ollama").mkdir(parents=True)
    item = archive(http, "/o.tgz", tarball({"bin/ollama": b"x"}))
    with pytest.raises(ProvisionError, match="is not a symlink"):
        host.change(item)


# --- Hugging Face -------------------------------------------------------------------------------

@pytest.fixture
def hub_repo() -> HubRepo:
    return HubRepo(
        repo="unsloth/Tiny-GGUF", commit=COMMIT,
        files={"Q4_K_M/tiny-00001-of-00002.gguf": blob(70_000, seed=40),
               "Q4_K_M/tiny-00002-of-00002.gguf": blob(30_000, seed=41),
               "Q8_0/tiny.gguf": blob(90_000, seed=42),
               "config.json": b'{"model_type": "tiny"}\n',
               "README.md": b"# tiny\n"},
        lfs=frozenset({"Q4_K_M/tiny-00001-of-00002.gguf", "Q4_K_M/tiny-00002-of-00002.gguf", "Q8_0/tiny.gguf"}))


def test_hf_resolves_through_the_hub_and_downloads(tmp_path: Path, http: HttpStandin, hub_repo: HubRepo,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    serve_repo(http, hub_repo)
    files = resolve_hf(hub_repo.repo, COMMIT, ["Q4_K_M/*", "*.json"], "/srv/models/tiny", endpoint=http.url(),
                       token=None, cache_dir=tmp_path / "cache")
    assert [(f.dest, f.size) for f in files] == [
        ("/srv/models/tiny/Q4_K_M/tiny-00001-of-00002.gguf", 70_000),
        ("/srv/models/tiny/Q4_K_M/tiny-00002-of-00002.gguf", 30_000),
        ("/srv/models/tiny/config.json", len(hub_repo.files["config.json"]))]
    assert files[0].sha256 == sha(hub_repo.files["Q4_K_M/tiny-00001-of-00002.gguf"]) and not files[0].git_blob
    assert files[2].sha256 == "" and len(files[2].git_blob) == 40  # a small non-LFS file: its git blob id
    assert files[0].url == f"{http.url()}/unsloth/Tiny-GGUF/resolve/{COMMIT}/Q4_K_M/tiny-00001-of-00002.gguf"
    api = http.to(api_path(hub_repo.repo, COMMIT))
    assert len(api) == 1 and api[0].query == "blobs=true"
    host = Host(tmp_path)
    result = host.apply(Download("model:tiny", files))
    assert result.returncode == 0, result.stdout + result.stderr
    for path in ("Q4_K_M/tiny-00001-of-00002.gguf", "Q4_K_M/tiny-00002-of-00002.gguf", "config.json"):
        assert host.path(f"/srv/models/tiny/{path}").read_bytes() == hub_repo.files[path]
    assert not host.path("/srv/models/tiny/Q8_0").exists()
    # a pinned revision never changes: the second resolve (plan, then apply) does not ask again
    again = resolve_hf(hub_repo.repo, COMMIT, ["*.json", "Q4_K_M/*"], "/srv/models/tiny", endpoint=http.url(),
                       token=None, cache_dir=tmp_path / "cache")
    assert again == files and len(http.to(api_path(hub_repo.repo, COMMIT))) == 1


def test_a_non_lfs_file_is_checked_by_its_git_blob_id(tmp_path: Path, http: HttpStandin, hub_repo: HubRepo,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    serve_repo(http, hub_repo)
    http.files[f"/{hub_repo.repo}/resolve/{COMMIT}/config.json"].wrong = True
    files = resolve_hf(hub_repo.repo, COMMIT, ["config.json"], "/srv/t", endpoint=http.url(), token=None,
                       cache_dir=tmp_path / "cache")
    result = Host(tmp_path).apply(Download("model:t", files))
    assert result.returncode != 0 and "/srv/t/config.json: checksum mismatch" in result.stdout


def test_hf_private_repo_uses_the_token(tmp_path: Path, http: HttpStandin, hub_repo: HubRepo,
                                        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    token = "hf_private42"  # noqa: S105 (a test token)
    private = HubRepo(hub_repo.repo, COMMIT, hub_repo.files, hub_repo.lfs, token=token)
    cdn = HttpStandin().start()
    request.addfinalizer(cdn.stop)
    serve_repo(http, private, cdn=cdn)
    with pytest.raises(ProvisionError, match="no such repo, or it is private"):
        resolve_hf(private.repo, COMMIT, ["Q8_0/*"], "/srv/t", endpoint=http.url(), token=None,
                   cache_dir=tmp_path / "cache")
    files = resolve_hf(private.repo, COMMIT, ["Q8_0/*", "README.md"], "/srv/t", endpoint=http.url(), token=token,
                       cache_dir=tmp_path / "cache")
    header_file = tmp_path / "header"
    header_file.write_text(header_line(token))
    item = Download("model:t", files, header_file=str(header_file))
    host = Host(tmp_path)
    result = host.apply(item)
    assert result.returncode == 0, result.stdout + result.stderr
    assert host.path("/srv/t/Q8_0/tiny.gguf").read_bytes() == hub_repo.files["Q8_0/tiny.gguf"]
    assert host.path("/srv/t/README.md").read_bytes() == hub_repo.files["README.md"]
    hub_asked = [r for r in http.requests if "/resolve/" in r.path]
    assert {r.status for r in hub_asked} == {200, 302}
    assert all(r.headers["authorization"] == f"Bearer {token}" for r in hub_asked)
    # the LFS file came from the "CDN" after the redirect, and the token did not follow it there
    # (curl keeps a custom Authorization header to the first host since 7.58.0)
    [cdn_request] = cdn.requests
    assert cdn_request.status == 200 and "authorization" not in cdn_request.headers


def test_hf_offline_uses_the_cache_or_says_what_is_missing(tmp_path: Path, hub_repo: HubRepo,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with HttpStandin() as http:
        serve_repo(http, hub_repo)
        monkeypatch.setenv("HF_ENDPOINT", http.url())  # the mirror variable, no explicit endpoint
        online = resolve_hf(hub_repo.repo, COMMIT, ["Q8_0/*"], "/srv/t", endpoint=None, token=None, cache_dir=cache)
    # the stand-in is gone: offline mode answers from the cache alone
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = resolve_hf(hub_repo.repo, COMMIT, ["Q8_0/*"], "/srv/t", endpoint=None, token=None, cache_dir=cache)
    assert offline == online
    with pytest.raises(ProvisionError, match=r"HF_HUB_OFFLINE is set and unsloth/Tiny-GGUF@.* was never resolved"):
        resolve_hf(hub_repo.repo, COMMIT, ["Q4_K_M/*"], "/srv/t", endpoint=None, token=None, cache_dir=cache)
    # online again with no hub: a clear error, not a traceback
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ProvisionError, match="cannot reach"):
        resolve_hf(hub_repo.repo, COMMIT, ["Q4_K_M/*"], "/srv/t", endpoint=None, token=None, cache_dir=cache)


def test_hf_include_that_matches_nothing_or_an_unknown_revision(tmp_path: Path, http: HttpStandin,
                                                                hub_repo: HubRepo,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    serve_repo(http, hub_repo)
    with pytest.raises(ProvisionError, match=r"no file of unsloth/Tiny-GGUF@.* matches include"):
        resolve_hf(hub_repo.repo, COMMIT, ["Q2_K/*"], "/srv/t", endpoint=http.url(), token=None,
                   cache_dir=tmp_path / "c")
    with pytest.raises(ProvisionError, match=r"unsloth/Tiny-GGUF@f{40} .*: no such revision"):
        resolve_hf(hub_repo.repo, "f" * 40, [], "/srv/t", endpoint=http.url(), token=None, cache_dir=tmp_path / "c")


def test_hf_refuses_a_listed_path_that_escapes_dest(tmp_path: Path, http: HttpStandin,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    serve_repo(http, HubRepo("a/b", COMMIT, {"../../etc/cron.d/x": b"boom"}, frozenset()))
    with pytest.raises(ProvisionError, match="unsafe file name"):
        resolve_hf("a/b", COMMIT, [], "/srv/t", endpoint=http.url(), token=None, cache_dir=tmp_path / "c")
