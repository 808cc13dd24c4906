"""Write a small file in robomimic's HDF5 layout, for the demo of `dpstack dataset import robomimic`.

The trajectories are synthetic (a point reaching a random target with a proportional controller),
labelled as such in the file's attributes; real demonstrations come from `dpstack collect` or from
robomimic files the user already has.
"""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np


def main(path: str, demos: int = 20, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as h5:
        data = h5.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "synthetic-reach", "synthetic": True})
        for i in range(demos):
            pos, target = rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3)
            positions, actions = [], []
            for _ in range(int(rng.integers(40, 80))):
                action = np.clip(2.0 * (target - pos) + rng.normal(0, 0.02, 3), -1, 1)
                positions.append(pos.copy())
                actions.append(np.append(action, 1.0 if np.linalg.norm(target - pos) < 0.05 else -1.0))
                pos = pos + 0.1 * action
            demo = data.create_group(f"demo_{i}")
            demo.create_dataset("actions", data=np.asarray(actions, np.float32))
            obs = demo.create_group("obs")
            obs.create_dataset("robot0_eef_pos", data=np.asarray(positions))
            obs.create_dataset("object", data=np.tile(target, (len(positions), 1)))
    print(f"wrote {demos} synthetic demos to {path}")


if __name__ == "__main__":
    main(sys.argv[1])
