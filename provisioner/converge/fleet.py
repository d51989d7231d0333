"""Plan or apply on many targets in parallel; one failing never stops the others."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from provisioner.converge.next_steps import next_steps
from provisioner.converge.run import HostResult, apply_plan, plan_host
from provisioner.errors import Problem, ProvisionError, UsageError
from provisioner.facts.gather import template_facts
from provisioner.profile.nodes import ClusterNodes
from provisioner.render.cached import BuildRequest, CachedBuild, cached_build
from provisioner.render.resources import Rendered
from provisioner.transport import Transport
from provisioner.transport.local import LocalTransport

if TYPE_CHECKING:
    from provisioner.render.pipeline import Built


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

    def node_of(self, nodes: ClusterNodes) -> str | None:
        """The cluster node this target converges as (None: not a cluster profile). A
        target that is no inventory host must say which (a worker given the head's files
        would become a second head)."""
        if not nodes.nodes:
            return None
        if self.node is not None:
            return nodes.chosen(self.node)
        if self.per_host_node:
            return nodes.for_host(self.name)
        raise UsageError(f"{nodes.profile_name} is a cluster: which node is {self.name}?",
                         hint=f"pass --node NAME (one of {', '.join(nodes.names)}), "
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

    def request(self, ignore_fit: bool) -> BuildRequest:
        # a target's model comes as its lock pins it: a branch or tag is never resolved here
        return BuildRequest(str(self.profile), self.overrides, self.model_root, ignore_fit, require_lock=True)

    def build(self, ignore_fit: bool) -> Built:
        """The full build (verify and monitor read the Spec); plan and apply use ``cached``."""
        return self.request(ignore_fit).build()

    def cached(self, ignore_fit: bool) -> CachedBuild:
        return cached_build(self.request(ignore_fit))


@dataclass(frozen=True)
class Outcome:
    name: str
    result: HostResult | None
    error: list[Problem] | None
    next_steps: tuple[str, ...] = ()  # after an apply: what is left for a person

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
    """Plan (and apply) every target; results in the targets' order.

    Each host's connection is opened (key exchange, authentication) in its worker
    thread while this thread builds the profiles, so the network wait and the build
    overlap; each profile is built once, before any host is read."""
    cache = RenderCache()
    builds: dict[tuple[Path, str], Future[CachedBuild | list[Problem]]] = {t.key: Future() for t in targets}

    def one(target: Target) -> Outcome:
        outcome = _connect_and_converge(target, builds[target.key], options, cache)
        if on_done is not None:
            on_done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, min(options.forks, len(targets)))) as pool:
        running = [pool.submit(one, target) for target in targets]
        try:
            for target in targets:
                pending = builds[target.key]
                if not pending.done():
                    try:
                        pending.set_result(target.cached(options.ignore_fit))
                    except ProvisionError as exc:
                        pending.set_result(exc.problems)
        except BaseException as exc:  # an interrupt: the workers wait on the builds, they must hear of it
            for pending in builds.values():
                if not pending.done():
                    pending.set_exception(exc)
            raise
        return [job.result() for job in running]


class RenderCache:
    """One run's renders with hosts' facts: a fleet's hosts mostly share their facts, so each
    distinct (profile, facts, node) renders once. Lives as long as the run that made it."""

    def __init__(self) -> None:
        self._rendered: dict[tuple[tuple[Path, str], str, str], Rendered] = {}
        self._lock = threading.Lock()

    def rendered(self, target: Target, built: CachedBuild, facts: dict[str, str], node: str | None) -> Rendered:
        facts = template_facts(facts)
        key = (target.key, json.dumps(facts, sort_keys=True), node or "")
        with self._lock:
            if key not in self._rendered:
                self._rendered[key] = built.rendered_for(facts, node)
            return self._rendered[key]


def _connect_and_converge(target: Target, pending: Future[CachedBuild | list[Problem]], options: RunOptions,
                          cache: RenderCache) -> Outcome:
    """Connect first (the build runs meanwhile), then wait for the build and converge. A
    profile that does not build is the error reported, whether or not the host answered."""
    transport: Transport | None = None
    failed: Outcome | None = None
    try:
        transport = target.transport_factory()
    except ProvisionError as exc:
        failed = Outcome(target.name, None, exc.problems)
    except Exception as exc:
        failed = Outcome(target.name, None, [Problem(f"{target.name}: {type(exc).__name__}: {exc}")])
    try:
        built = pending.result()
        if isinstance(built, list):
            return Outcome(target.name, None, built)
        if failed is not None:
            return failed
        assert transport is not None
        return _converge(target, built, transport, options, cache)
    finally:
        if transport is not None:
            transport.close()


def _converge(target: Target, built: CachedBuild, transport: Transport, options: RunOptions,
              cache: RenderCache) -> Outcome:
    summary = built.summary
    try:
        node = target.node_of(summary.nodes)
        first = built.rendered_for(node=node)
        plan, gathered = plan_host(first, transport, service=summary.service, restart=options.restart,
                                   rerender=lambda facts: cache.rendered(target, built, facts, node))
        if not options.apply:
            return Outcome(target.name, HostResult(target.name, plan, gathered), None)
        result = apply_plan(plan, gathered, transport, profile_name=summary.profile_name,
                            wait_lock=options.wait_lock)
        # what is left for a person: the secrets the build cache keeps, and this plan
        remote = None if isinstance(transport, LocalTransport) else transport.name
        steps = next_steps(summary.secrets, plan, transport.root, remote) if result.applied else ()
        return Outcome(target.name, result, None, steps)
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
