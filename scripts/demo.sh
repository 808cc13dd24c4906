#!/usr/bin/env bash
# The main job on a small default, end to end. It grows as the stack grows:
# collect demos -> train -> evaluate -> export -> run over ROS 2.
set -euo pipefail
out=${1:-demo}
dpstack=.venv/bin/dpstack
mkdir -p "$out"
rm -rf "$out/robomimic.zarr"

echo "== 1. import a robomimic-format file into an episode store"
.venv/bin/python scripts/make_robomimic_sample.py "$out/robomimic_sample.hdf5"
$dpstack dataset import robomimic "$out/robomimic_sample.hdf5" out="$out/robomimic.zarr" progress=false

echo "== 2. inspect it"
$dpstack dataset info "$out/robomimic.zarr" verify=true

echo "== 3. sample training windows with the normalizer fitted on the store"
.venv/bin/python - "$out/robomimic.zarr" <<'PY'
import sys
from torch.utils.data import DataLoader
from policy.data.dataset import SequenceDataset
from policy.data.sampler import split_episodes
from policy.data.store import EpisodeStore
from policy.normalizer import Normalizer

store = EpisodeStore.open(sys.argv[1])
train, val = split_episodes(store.n_episodes, val_ratio=0.2)
dataset = SequenceDataset(store.path, obs_keys=["object", "robot0_eef_pos"], episodes=train)
normalizer = Normalizer.fit(store, {"action": "minmax", "object": "minmax", "robot0_eef_pos": "minmax"})
batch = next(iter(DataLoader(dataset, batch_size=32, shuffle=True)))
action = normalizer.normalize("action", batch["action"])
print(f"{len(dataset)} training windows from {len(train)} episodes ({len(val)} held out);",
      f"batch action {tuple(action.shape)} in [{action.min():.2f}, {action.max():.2f}]")
PY
echo "demo finished: outputs in $out/"
