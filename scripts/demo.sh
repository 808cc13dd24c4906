#!/usr/bin/env bash
# The main job on a small default, end to end. It grows as the stack grows:
# collect demos -> train -> evaluate -> export -> run over ROS 2.
set -euo pipefail
out=${1:-demo}
episodes=${DEMO_EPISODES:-20}
dpstack=.venv/bin/dpstack
mkdir -p "$out"

echo "== 1. collect $episodes Push-T expert demonstrations (resumes if $out/pusht.zarr exists)"
$dpstack collect task=pusht episodes="$episodes" out="$out/pusht.zarr" workers=2 | tail -n 25

echo "== 2. inspect the episode store"
$dpstack dataset info "$out/pusht.zarr" verify=true

echo "== 3. sample normalized training windows from it"
.venv/bin/python - "$out/pusht.zarr" <<'PY'
import sys
from torch.utils.data import DataLoader
from envs.registry import make_env
from policy.data.dataset import SequenceDataset
from policy.data.sampler import split_episodes
from policy.data.store import EpisodeStore
from policy.normalizer import Normalizer

store = EpisodeStore.open(sys.argv[1])
features = make_env("pusht").features  # the task declares its observation keys and shapes once
train, val = split_episodes(store.n_episodes, val_ratio=0.1)
dataset = SequenceDataset(store.path, obs_keys=list(features), episodes=train)
modes = {"action": "minmax", **{key: f.normalize for key, f in features.items()}}
normalizer = Normalizer.fit(store, modes)
batch = next(iter(DataLoader(dataset, batch_size=64, shuffle=True)))
action = normalizer.normalize("action", batch["action"])
print(f"{len(dataset)} training windows from {len(train)} episodes ({len(val)} held out);",
      f"batch action {tuple(action.shape)} normalized to [{action.min():.2f}, {action.max():.2f}]")
PY
echo "demo finished: outputs in $out/"
