"""Import a robomimic HDF5 file (data/demo_N/obs/<key>, data/demo_N/actions) into a new episode store.

Actions become the key `action`; observation keys keep their names; rewards/dones become
`reward`/`done` when present. The store is built beside `out` and renamed into place at the end, so a
failed import leaves nothing behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from dpstack.bounds import bounds

CONFIG_NAME = "dataset_import_robomimic"
POSITIONAL = ("source",)


@dataclass
class Config:
    source: str = field(default="???", metadata={"help": "robomimic .hdf5 file to read"})
    out: str = field(default="???", metadata={"help": "new episode store directory (must not exist)"})
    obs_keys: list[str] | None = field(
        default=None,
        metadata={"help": "observation keys to import, e.g. [object,robot0_eef_pos] (default all)"},
    )
    chunk_bytes: int = field(
        default=1 << 20, metadata={"help": "target uncompressed bytes per zarr chunk", **bounds(1)}
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


def run(cfg: Config) -> int:
    from dpstack.data.robomimic import import_robomimic

    store = import_robomimic(cfg.source, cfg.out, cfg.obs_keys, chunk_bytes=cfg.chunk_bytes, progress=cfg.progress)
    print(json.dumps({"out": str(store.path), "episodes": store.n_episodes, "steps": store.n_steps}))
    return 0
