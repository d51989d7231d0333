"""The Hub stand-in the lock tests share: one repo with two quants' shards at a branch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lock.test_lock import COMMIT, FILES, REPO
from tests.support.http_standin import HttpStandin
from tests.support.hub_standin import HubRepo, serve_repo


@pytest.fixture
def hub() -> Iterator[HttpStandin]:
    with HttpStandin() as standin:
        serve_repo(standin, HubRepo(REPO, COMMIT, FILES, lfs=frozenset(p for p in FILES if p.endswith(".gguf"))),
                   branch="main")
        yield standin
