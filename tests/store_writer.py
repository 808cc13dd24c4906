"""Subprocess used by the crash-safety tests: appends deterministic episodes to a store.

usage: python -m tests.store_writer <store> <episodes> [die_at]

With die_at=N the process hard-exits (os._exit, like SIGKILL: no cleanup, no flush) at the N-th zarr
array write of its last append, i.e. in the middle of writing an episode; with die_at=commit it exits
after every array write, just before the commit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import zarr

from dpstack.data.store import EpisodeStore
from tests.conftest import make_episode

LENGTH = 40


def main() -> None:
    path, episodes = Path(sys.argv[1]), int(sys.argv[2])
    die_at = sys.argv[3] if len(sys.argv) > 3 else ""
    store = EpisodeStore.open(path, mode="a") if path.exists() else EpisodeStore.create(path, chunk_bytes=4096)
    start = store.n_episodes
    for index in range(start, start + episodes):
        if die_at == "commit" and index == start + episodes - 1:
            EpisodeStore._set_committed = lambda self, n: os._exit(9)
        elif die_at and index == start + episodes - 1:
            original = zarr.Array.__setitem__
            calls = [0]

            def dying_setitem(self, selection, value, _original=original, _calls=calls):
                _calls[0] += 1
                if _calls[0] == int(die_at):
                    os._exit(9)
                return _original(self, selection, value)

            zarr.Array.__setitem__ = dying_setitem
        store.append_episode(make_episode(index, LENGTH + index % 3, image=True))
        print(index, flush=True)


if __name__ == "__main__":
    main()
