"""A venv's closure resolved by the real pip against a loopback index stand-in: the
wheels and sha256s the index serves, one line for what cannot be locked, and the
platform tags a host accepts as packaging itself lists them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from packaging import _manylinux

from provisioner.errors import ProvisionError
from provisioner.lock.wheels import PinnedVenv, PinnedWheel, from_data, manylinux_platforms, resolve_venv, to_data
from provisioner.profile.install_section import VenvEngine
from tests.support.http_standin import HttpStandin, Served
from tests.support.pypi_standin import Dist, sdist, serve_index, wheel

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"  # pip evaluates markers for this Python
NEXT = f"{sys.version_info.major}.{sys.version_info.minor + 1}"
DISTS = [wheel("provision-demo-a", "1.0", ("provision-demo-b>=1",)), wheel("provision-demo-b", "1.0"),
         wheel("provision-demo-b", "1.1"),
         wheel("provision-demo-d", "1.0", ("provision-demo-c",)), sdist("provision-demo-c", "1.0"),
         wheel("provision-demo-e", "1.0", (f'provision-demo-b>=1; python_version < "{NEXT}"',))]


@pytest.fixture
def index() -> Iterator[tuple[HttpStandin, str]]:
    with HttpStandin() as standin:
        yield standin, serve_index(standin, DISTS)


def engine(index_url: str, *requirements: str, python: str = HERE, **more: object) -> VenvEngine:
    return VenvEngine.model_validate({"method": "venv", "requirements": list(requirements), "index_url": index_url,
                                      "resolve_for": {"python": python, "glibc": "2.36"}, **more})


def served(name: str, version: str) -> Dist:
    return next(d for d in DISTS if d.name == name and d.version == version and d.filename.endswith(".whl"))


def test_resolve_locks_the_closure_with_the_served_files_hashes(index: tuple[HttpStandin, str]) -> None:
    standin, url = index
    locked = resolve_venv(engine(url, "provision-demo-a==1.0"))
    # b is not in the profile: the resolver took its newest version, and the lock says which
    a, b = served("provision-demo-a", "1.0"), served("provision-demo-b", "1.1")
    assert locked.wheels == (PinnedWheel("provision-demo-a", "1.0", standin.url(f"/files/{a.filename}"), a.sha256),
                             PinnedWheel("provision-demo-b", "1.1", standin.url(f"/files/{b.filename}"), b.sha256))
    assert (locked.python, locked.glibc, locked.machine, locked.index_url) == (HERE, "2.36", "x86_64", url)
    assert from_data(to_data(locked)) == locked
    assert locked.for_engine(engine(url, "provision-demo-a==1.0"))
    assert not locked.for_engine(engine(url, "provision-demo-a==1.0", python="3.99"))
    assert not locked.for_engine(engine(url, "provision-demo-a==1.0", extra_index_urls=[url]))
    assert locked.wheel_rows[1] == ("provision-demo-b", "1.1", standin.url(f"/files/{b.filename}"), b.sha256)


def test_an_index_link_without_a_hash_gets_the_downloaded_files_sha256(index: tuple[HttpStandin, str]) -> None:
    """pip hashes the file it fetched when the index gives no #sha256: the lock holds that."""
    standin, url = index
    b = served("provision-demo-b", "1.0")
    standin.serve("/simple/provision-demo-b/", Served(f'<a href="../../files/{b.filename}">{b.filename}</a>\n'.encode(),
                                                      content_type="text/html"))
    [locked] = resolve_venv(engine(url, "provision-demo-b==1.0")).wheels
    assert locked.sha256 == b.sha256 and standin.to(f"/files/{b.filename}")


@pytest.mark.skipif(subprocess.run(["/usr/bin/python3", "-m", "pip", "--version"], capture_output=True,
                                    check=False).returncode != 0, reason="needs Debian's python3-pip")
def test_another_pythons_pip_resolves_the_same_closure(index: tuple[HttpStandin, str]) -> None:
    """Debian 12's own pip (23.0.1) takes the same options and writes the same report."""
    _, url = index
    assert (resolve_venv(engine(url, "provision-demo-a==1.0"), pip_python="/usr/bin/python3")
            == resolve_venv(engine(url, "provision-demo-a==1.0")))
    with pytest.raises(ProvisionError, match="cannot run /nonexistent/python3 -m pip"):
        resolve_venv(engine(url, "provision-demo-a==1.0"), pip_python="/nonexistent/python3")


def test_a_dependency_with_only_an_sdist_is_refused_in_one_line(index: tuple[HttpStandin, str]) -> None:
    _, url = index
    with pytest.raises(ProvisionError) as caught:
        resolve_venv(engine(url, "provision-demo-d==1.0"))
    line = caught.value.first.one_line()
    assert "\n" not in line
    assert "ERROR: Could not find a version that satisfies the requirement provision-demo-c" in line
    assert "a lock takes wheels only" in line


def test_a_bad_pin_is_one_line_naming_what_the_index_has(index: tuple[HttpStandin, str]) -> None:
    _, url = index
    with pytest.raises(ProvisionError) as caught:
        resolve_venv(engine(url, "provision-demo-a==9.9"))
    line = caught.value.first.one_line()
    assert "\n" not in line and "provision-demo-a==9.9 (from versions: 1.0)" in line


def test_a_marker_that_picks_differently_for_the_host_is_refused(index: tuple[HttpStandin, str]) -> None:
    """e needs b only below Python NEXT: pip here (HERE) pulls b in, a host on NEXT would not."""
    _, url = index
    assert len(resolve_venv(engine(url, "provision-demo-e==1.0")).wheels) == 2  # for this very Python: fine
    with pytest.raises(ProvisionError) as caught:
        resolve_venv(engine(url, "provision-demo-e==1.0", python=NEXT))
    assert caught.value.first.message.startswith(
        f"provision-demo-e requires 'provision-demo-b>=1; python_version < \"{NEXT}\"': that marker may pick")
    assert f"let a Python {NEXT} on Linux x86_64 resolve: `provision lock --python /usr/bin/python{NEXT} PROFILE`" \
        in (caught.value.first.hint or "")


def test_no_resolve_for_says_how_to_read_it_on_the_host() -> None:
    bare = VenvEngine.model_validate({"method": "venv", "requirements": ["vllm==0.11.0"]})
    with pytest.raises(ProvisionError) as caught:
        resolve_venv(bare)
    assert "resolve_for" in caught.value.first.message
    assert "ldd --version" in (caught.value.first.hint or "") and "uname -m" in (caught.value.first.hint or "")


def test_platform_tags_follow_pep_600_and_its_legacy_aliases() -> None:
    # PEP 600: manylinux1 = manylinux_2_5, manylinux2010 = manylinux_2_12, manylinux2014 = manylinux_2_17
    tags = manylinux_platforms("2.17", "x86_64")
    assert tags[:2] == ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    assert tags[tags.index("manylinux_2_12_x86_64") + 1] == "manylinux2010_x86_64"
    assert tags[-3:] == ["manylinux_2_5_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    # aarch64 has manylinux tags from manylinux2014 (PEP 599) on only
    assert manylinux_platforms("2.28", "aarch64")[-3:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64",
                                                           "linux_aarch64"]
    with pytest.raises(ValueError):
        manylinux_platforms("2.39", "armv7l")


@pytest.mark.parametrize(("glibc", "machine"), [("2.39", "x86_64"), ("2.28", "aarch64"), ("2.17", "x86_64"),
                                                ("2.31", "aarch64")])
def test_platform_tags_are_what_packaging_lists_on_such_a_host(glibc: str, machine: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """packaging's own list for a host (pip on the host uses it): the glibc reader told the target's."""
    monkeypatch.setattr(_manylinux, "_get_glibc_version", lambda: (2, int(glibc.split(".")[1])))
    monkeypatch.setattr(_manylinux, "_have_compatible_abi", lambda executable, archs: True)
    assert manylinux_platforms(glibc, machine) == [*_manylinux.platform_tags([machine]), f"linux_{machine}"]


GOOD = PinnedVenv(("vllm==0.11.0",), "3.12", "2.39", "x86_64", None, (),
                  (PinnedWheel("vllm", "0.11.0", "https://files.example/vllm-0.11.0-cp38-abi3-manylinux1_x86_64.whl",
                               "a" * 64),))


@pytest.mark.parametrize(("path", "value", "says"), [
    (("wheels", 0, "sha256"), "A" * 64, "is not 64 lowercase hex digits"),
    (("wheels", 0, "url"), "https://files.example/x y.whl", "is not a plain http(s)/file URL"),
    (("wheels", 0, "url"), "https://files.example/x'.whl", "is not a plain http(s)/file URL"),
    (("wheels", 0, "url"), "https://u:secret@files.example/x.whl", "is not a plain http(s)/file URL"),
    (("wheels", 0, "url"), "ftp://files.example/x.whl", "is not a plain http(s)/file URL"),
    (("wheels", 0, "url"), "https://files.example/x.tar.gz", "is not a wheel"),
    (("wheels", 0, "name"), "vllm; rm -rf /", "is not a plain package name"),
    (("wheels", 0, "version"), "1.0 --index-url=x", "is not a plain version"),
    (("resolve_for", "python"), "3.1.2", "is not e.g. 3.12"),
    (("requirements", 0), "vllm>=0.11", "are not sorted exact pins"),
    (("index_url",), "http://x/$HOME", "is not a plain http(s)/file URL"),
])
def test_from_data_refuses_what_could_not_safely_reach_a_host(path: tuple[str | int, ...], value: str,
                                                              says: str) -> None:
    data = to_data(GOOD)
    place: object = data
    for key in path[:-1]:
        place = place[key]  # type: ignore[index]
    place[path[-1]] = value  # type: ignore[index]
    with pytest.raises(ValueError) as caught:
        from_data(data)
    assert says in str(caught.value)


def test_from_data_refuses_a_missing_key_and_a_twice_listed_wheel() -> None:
    data = to_data(GOOD)
    del data["wheels"][0]["sha256"]
    with pytest.raises(ValueError, match="lacks or misshapes 'sha256'"):
        from_data(data)
    twice = to_data(GOOD)
    twice["wheels"].append({**twice["wheels"][0], "name": "VLLM"})
    with pytest.raises(ValueError, match="listed twice"):
        from_data(twice)
