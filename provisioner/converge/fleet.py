"""Plan or apply on many targets in parallel; one failing never stops the others."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from provisioner.converge.run import HostResult, apply_plan, plan_host
from provisioner.errors import Problem, ProvisionError, UsageError
from provisioner.profile.cluster import chosen_node, node_for_host
from provisioner.render.files import template_facts
from provisioner.render.pipeline import Built, build
from provisioner.render.resources import Rendered
from provisioner.transport import Transport


@dataclass(frozen=True)
class Target:
    """What to converge and how to reach it."""

    name: str
    profile: Path
    transport_factory: Callable[[], Transport]
    overrides: str = ""  # the inventory host's profile overrides, as sorted JSON ("" for none)
    model_root: str | None = None  # where its model files are readable here (None: a remote host)
    # an inventory host: on a cluster profile it gets the files of the node whose host it is
    per_host_node: bool = False
    node: str | None = None  # --node: the cluster node this target is, said outright

    def node_of(self, built: Built) -> str | None:
        """The cluster node this target converges as (None: not a cluster profile). A
        target that is no inventory host must say which (a worker given the head's files
        would become a second head)."""
        cluster = built.spec.profile.cluster
        if cluster is None:
            return None
        if self.node is not None:
            return chosen_node(built.spec, self.node)
        if self.per_host_node:
            return cluster_node(built, self.name)
        raise UsageError(f"{built.spec.profile.metadata.name} is a cluster: which node is {self.name}?",
                         hint=f"pass --node NAME (one of {', '.join(n.name for n in cluster.nodes)}), "
                         "or converge with -i INVENTORY")

    @property
    def key(self) -> tuple[Path, str]:
        return (self.profile, self.overrides)

    @contextlib.contextmanager
    def opened(self) -> Iterator[Transport]:
        """The target's transport, closed afterwards whatever happens."""
        transport = self.transport_factory()
        try:
            yield transport
        finally:
            transport.close()

    def build(self, ignore_fit: bool) -> Built:
        return build(self.profile, ignore_fit=ignore_fit,
                     overrides=json.loads(self.overrides) if self.overrides else None,
                     model_root=self.model_root)


@dataclass(frozen=True)
class Outcome:
    name: str
    result: HostResult | None
    error: list[Problem] | None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def changed(self) -> bool:
        return self.result is not None and self.result.plan.changed


@dataclass(frozen=True)
class RunOptions:
    apply: bool
    restart: bool = False
    wait_lock: float = 0.0
    ignore_fit: bool = False
    forks: int = 20


def run(targets: list[Target], options: RunOptions,
        on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Plan (and apply) every target; results in the targets' order."""
    cache = RenderCache()
    builds: dict[tuple[Path, str], Built | list[Problem]] = {}
    for target in targets:  # each profile is built once, up front, before any host is touched
        if target.key not in builds:
            try:
                builds[target.key] = target.build(options.ignore_fit)
            except ProvisionError as exc:
                builds[target.key] = exc.problems

    def one(target: Target) -> Outcome:
        built = builds[target.key]
        if isinstance(built, list):
            outcome = Outcome(target.name, None, built)
        else:
            outcome = _converge(target, built, options, cache)
        if on_done is not None:
            on_done(outcome)
        return outcome

    if len(targets) == 1:
        return [one(targets[0])]
    with ThreadPoolExecutor(max_workers=max(1, options.forks)) as pool:
        return list(pool.map(one, targets))


class RenderCache:
    """One run's renders with hosts' facts: a fleet's hosts mostly share their facts, so each
    distinct (profile, facts, node) renders once. Lives as long as the run that made it."""

    def __init__(self) -> None:
        self._rendered: dict[tuple[tuple[Path, str], str, str], Rendered] = {}
        self._lock = threading.Lock()

    def rendered(self, target: Target, built: Built, facts: dict[str, str], node: str | None) -> Rendered:
        facts = template_facts(facts)
        key = (target.key, json.dumps(facts, sort_keys=True), node or "")
        with self._lock:
            if key not in self._rendered:
                self._rendered[key] = built.rendered_for(facts, node)
            return self._rendered[key]


def cluster_node(built: Built, host: str) -> str | None:
    """The cluster node an inventory host is (None: not a cluster profile)."""
    if built.spec.profile.cluster is None:
        return None
    return node_for_host(built.spec, host).name


def _converge(target: Target, built: Built, options: RunOptions, cache: RenderCache) -> Outcome:
    try:
        node = target.node_of(built)
        first = built.rendered if node is None else built.rendered_for(node=node)
        with target.opened() as transport:
            plan, gathered = plan_host(first, transport, service=built.spec.profile.service.name,
                                       restart=options.restart,
                                       rerender=lambda facts: cache.rendered(target, built, facts, node))
            if not options.apply:
                return Outcome(target.name, HostResult(target.name, plan, gathered), None)
            result = apply_plan(plan, gathered, transport, profile_name=built.spec.profile.metadata.name,
                                wait_lock=options.wait_lock)
            return Outcome(target.name, result, None)
    except ProvisionError as exc:
        return Outcome(target.name, None, exc.problems)
    except Exception as exc:
        return Outcome(target.name, None, [Problem(f"{target.name}: {type(exc).__name__}: {exc}")])


T = TypeVar("T")


def map_targets(targets: list[Target], forks: int, work: Callable[[Target, Transport], T],
                failed: Callable[[Target, ProvisionError], T]) -> list[T]:
    """Run ``work`` on every target in parallel, each with its own open transport
    (always closed); a ProvisionError becomes ``failed``'s result for that target."""

    def one(target: Target) -> T:
        try:
            with target.opened() as transport:
                return work(target, transport)
        except ProvisionError as exc:
            return failed(target, exc)

    with ThreadPoolExecutor(max_workers=max(1, forks)) as pool:
        return list(pool.map(one, targets))
