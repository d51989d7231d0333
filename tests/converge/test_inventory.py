"""Inventories: ours and Ansible's, group vars, --limit, --host parsing (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
