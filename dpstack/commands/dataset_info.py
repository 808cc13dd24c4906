"""Print a JSON summary of an episode store: episodes, steps, and each key's shape and dtype.

With a task (``task=<name>``, by default the task that collected the store) the summary also says
whether the store's keys, shapes and dtypes match that task's spec, read without building its simulator.

Works on stores written by dpstack (zarr format 3) and on Diffusion Policy's published stores (zarr
format 2, directory or .zip). With verify=true every chunk is decoded and floats are checked for NaN.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

CONFIG_NAME = "dataset_info"
POSITIONAL = ("store",)


@dataclass
class Config:
    store: str = field(default="???", metadata={"help": "path of the episode store (directory or .zip)"})
    verify: bool = field(default=False, metadata={"help": "decode every chunk and check for NaN/inf"})
    for_task: str | None = field(
        default=None, metadata={"help": "check the store against this task's spec (None: the collecting task)"}
    )


def run(cfg: Config) -> int:
    from dpstack.data.store import EpisodeStore

    store = EpisodeStore.open(cfg.store)
    if cfg.verify:
        store.verify()
    summary = store.info()
    summary["verified"] = cfg.verify
    collected = summary.get("attrs", {}).get("collect", {})
    task_name = cfg.for_task or collected.get("task")
    if task_name:
        from dpstack.envs.registry import task_spec
        from dpstack.tasks import TaskConfig

        same = task_name == collected.get("task")
        task = TaskConfig(name=task_name, image=bool(collected.get("image", False)) if same else False)
        problems = store.mismatches(task_spec(task))
        summary["task"] = {"name": task_name, "image": task.image, "matches": not problems, "problems": problems}
    text = json.dumps(summary, indent=2)
    # keep shapes on one line: [\n 25650,\n 96\n] -> [25650, 96]
    print(
        re.sub(
            r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text
        )
    )
    return 0
