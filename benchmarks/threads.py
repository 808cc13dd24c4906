"""Why dpstack sets OMP_WAIT_POLICY=PASSIVE: training-step time with 1 or 2 torch threads, with and
without competing busy processes, under OpenMP's active (spinning) and passive waiting.

Each case runs in a fresh subprocess (the OpenMP wait policy is read once, when torch loads): 12 steps of
the small U-Net at batch 64, median of the last 8. The competitor is another single-threaded torch job
(the usual neighbour here: a second training or an evaluation), busy with 256x256 matmuls.

    python -m benchmarks.threads
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.report import write_results

_STEP = """
import json, statistics, time, torch
from dpstack.policy.denoisers.unet1d import ConditionalUnet1D, PRESETS
torch.set_num_threads({threads})
m = ConditionalUnet1D(2, 36, **PRESETS["small"])
opt = torch.optim.AdamW(m.parameters())
x, c, t = torch.randn(64, 16, 2), torch.randn(64, 36), torch.randint(0, 100, (64,))
times = []
for _ in range(12):
    start = time.perf_counter()
    loss = m(x, t, c).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - start)
print(json.dumps(statistics.median(times[4:])))
"""


_COMPETITOR = "import torch; torch.set_num_threads(1); a = torch.randn(256, 256)\nwhile True: a @ a"


def _step_time(threads: int, policy: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:  # "" leaves it unset: libgomp's default (spin a while, then sleep)
        env["OMP_WAIT_POLICY"] = policy
    code = _STEP.format(threads=threads)
    # import torch directly (not through dpstack) so the policy given here is the one in force
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    rows = []
    for competing in (0, 1, 2):
        for threads, policy in ((1, "PASSIVE"), (2, "ACTIVE"), (2, "PASSIVE"), (2, "")):
            busy = [subprocess.Popen([sys.executable, "-c", _COMPETITOR]) for _ in range(competing)]
            try:
                seconds = _step_time(threads, policy)
            finally:
                for process in busy:
                    process.kill()
                    process.wait()
            rows.append(
                {
                    "competing_processes": competing,
                    "threads": threads,
                    "omp_wait_policy": policy or "(unset)",
                    "step_s_median": seconds,
                }
            )
            print(rows[-1], flush=True)
    write_results(
        Path("benchmarks/results"),
        "threads",
        rows,
        columns=[
            ("competing busy processes", "competing_processes"),
            ("torch threads", "threads"),
            ("OMP_WAIT_POLICY", "omp_wait_policy"),
            ("U-Net step s (median)", "step_s_median"),
        ],
        meta={"model": "ConditionalUnet1D small, batch 64, horizon 16", "cores": os.cpu_count()},
    )


if __name__ == "__main__":
    main()
