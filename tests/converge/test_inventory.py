"""Inventories: ours and Ansible's, group vars, --limit, --host parsing (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.cli import main
from provisioner.converge.inventory import _ANSIBLE as ANSIBLE_NAMES
from provisioner.converge.inventory import host_from_arg, load_inventory, select
from provisioner.errors import ProvisionError
from provisioner.render.pipeline import build

ROOT = Path(__file__).resolve().parents[2]


def test_example_fleet_inventory_merges_group_vars_and_profiles_build() -> None:
    hosts = {h.name: h for h in load_inventory(ROOT / "examples/fleet/inventory.yaml")}
    assert set(hosts) == {"ws1", "ws2", "big1"}
    assert hosts["ws2"].port == 2200 and hosts["ws2"].user == "admin" and hosts["ws2"].become
    assert hosts["ws1"].profile == "rtx-4090-qwen3-30b-a3b-llamacpp"
    assert hosts["big1"].profile is not None and hosts["big1"].profile.endswith("quickstart.yaml")
    for host in hosts.values():
        assert host.profile is not None
        build(Path(host.profile))
    assert [h.name for h in select(list(hosts.values()), "workstations")] == ["ws1", "ws2"]
    assert [h.name for h in select(list(hosts.values()), "big*")] == ["big1"]
    with pytest.raises(ProvisionError, match="matches no host"):
        select(list(hosts.values()), "nope")


def test_ansible_inventory_children_and_vars(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text("""all:
  vars: {ansible_user: deploy}
  children:
    gpus:
      vars: {ansible_port: 2201, ansible_become: true}
      hosts:
        a: {ansible_host: 10.1.1.1}
        b: {ansible_host: 10.1.1.2, ansible_user: other, provision_profile: x.yaml}
""")
    hosts = {h.name: h for h in load_inventory(path)}
    assert hosts["a"].address == "10.1.1.1" and hosts["a"].user == "deploy" and hosts["a"].port == 2201
    assert hosts["a"].become and hosts["a"].groups == ("gpus",)
    assert hosts["b"].user == "other" and hosts["b"].profile == str(tmp_path / "x.yaml")


@pytest.mark.parametrize(("text", "problem"), [
    ("hosts: {a: {adress: x}}\n", "unknown setting 'adress'"),
    ("hosts: {a: {port: many}}\n", "port must be a number"),
    ("groups: {g: {hosts: [zz]}}\nhosts: {}\n", "unknown host 'zz'"),
    ("servers: {}\n", "unknown inventory key"),
    ("- a\n", "mapping"),
])
def test_bad_inventories_are_one_clear_error(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    with pytest.raises(ProvisionError, match=problem):
        load_inventory(path)


def test_host_argument() -> None:
    host = host_from_arg("admin@gpu-box:2222")
    assert (host.user, host.address, host.port) == ("admin", "gpu-box", 2222)
    assert host_from_arg("box").user is None
    with pytest.raises(ProvisionError):
        host_from_arg("box:ssh")


BAD_INVENTORIES = {
    "hosts as a list": "hosts: [a, b]\n",
    "a host as a list": "hosts:\n  a: [1, 2]\n",
    "all as a list": "all: [a]\n",
    "ansible hosts as a list": "all:\n  hosts: [a]\n",
    "group hosts as a word": "hosts: {a: {}}\ngroups:\n  g: {hosts: a}\n",
    "port beyond 65535": "hosts:\n  a: {port: 99999}\n",
    "port as a bool": "hosts:\n  a: {port: true}\n",
    "become as maybe": "hosts:\n  a: {become: maybe}\n",
    "ansible port beyond 65535": "all:\n  hosts:\n    a: {ansible_port: 70000}\n",
    "root with a blank": "hosts:\n  a: {root: /srv/my tree}\n",
    "root relative": "hosts:\n  a: {root: srv/tree}\n",
    "user with a semicolon": "hosts:\n  a: {user: 'x;id'}\n",
    "address with a dollar": "hosts:\n  a: {address: '$(id)'}\n",
    "address as a number list": "hosts:\n  a: {address: [1]}\n",
}


@pytest.mark.parametrize("text", BAD_INVENTORIES.values(), ids=BAD_INVENTORIES.keys())
def test_bad_inventory_is_one_line_never_a_coercion(tmp_path: Path, text: str) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(text)
    with pytest.raises(ProvisionError):
        load_inventory(inventory)
    result = CliRunner().invoke(main, ["plan", str(ROOT / "examples/quickstart.yaml"), "-i", str(inventory)])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr


def test_host_port_and_become_are_kept_exactly(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  a: {port: 2222, become: yes}\n  b: {port: '22', become: false}\n")
    hosts = {h.name: h for h in load_inventory(inventory)}
    assert (hosts["a"].port, hosts["a"].become) == (2222, True)
    assert (hosts["b"].port, hosts["b"].become) == (22, False)
    with pytest.raises(ProvisionError, match="1 to 65535"):
        host_from_arg("gpu:99999")



INVENTORY_FIELDS = ["address", "port", "user", "key", "profile", "root", "state_dir", "become", "jump",
                    "overrides"]
ANY_VALUE = st.one_of(st.text(max_size=40), st.integers(), st.booleans(), st.floats(allow_nan=False),
                      st.lists(st.integers(), max_size=2), st.none())


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(field=st.sampled_from(INVENTORY_FIELDS), value=ANY_VALUE, ansible=st.booleans())
def test_every_inventory_field_is_kept_exactly_or_refused_in_one_line(
        tmp_path_factory: pytest.TempPathFactory, field: str, value: object, ansible: bool) -> None:
    path = tmp_path_factory.mktemp("inv") / "inventory.yaml"
    names = {ours: theirs for theirs, ours in ANSIBLE_NAMES.items()}
    data = ({"all": {"hosts": {"h": {names[field]: value}}}} if ansible else {"hosts": {"h": {field: value}}})
    path.write_text(yaml.safe_dump(data))
    try:
        [host] = load_inventory(path)
    except ProvisionError as exc:
        assert all("\n" not in p.one_line() and "Traceback" not in p.one_line() for p in exc.problems)
        return
    kept = {"address": host.address if value is not None else None, "port": host.port, "user": host.user,
            "key": host.key, "root": host.root or None, "state_dir": host.state_dir, "jump": host.jump}
    if field in kept and value is not None:
        wanted = int(str(value)) if field == "port" else value
        assert kept[field] == wanted, f"{field}: {value!r} became {kept[field]!r}"
    if field == "become" and value is not None:
        assert host.become is (value in (True, "true", "True", "yes", "on"))


def test_a_parsed_inventory_is_kept_until_its_bytes_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed once per content: the same bytes give the same hosts from the cache, an
    edit is read again, and a broken edit is still reported at its line."""
    monkeypatch.setenv("PROVISION_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "inventory.yaml"
    path.write_text("hosts:\n  a: {address: 10.0.0.1, overrides: {runtime: {port: 8081}}}\n")
    first = load_inventory(path)
    assert list((tmp_path / "cache" / "builds" / "inventory").glob("*.json"))
    assert load_inventory(path) == first and first[0].overrides == {"runtime": {"port": 8081}}
    path.write_text("hosts:\n  a: {address: 10.0.0.2}\n")
    assert load_inventory(path)[0].address == "10.0.0.2"
    path.write_text("hosts:\n  a: {adress: 10.0.0.2}\n")
    with pytest.raises(ProvisionError, match="unknown setting 'adress'"):
        load_inventory(path)
