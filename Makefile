# dpstack: `make demo` (set up + run the main job on a small default) and `make test`.
# Everything installs into .venv/ at the repository root; nothing is installed system-wide.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint lint-imports check-install bench bench-data bench-experts bench-samplers bench-export bench-ros bench-floor bench-ros-rate bench-few-step bench-train bench-planners bench-rollout bench-rl clean

# torch goes first, pinned to the CPU wheel this machine keeps on disk: letting pip resolve `torch`
# itself would download a multi-GB CUDA build. The stamp file re-runs setup when pyproject changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "dpstack needs Python 3.11, got " + sys.version'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[full,dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	bash scripts/demo.sh $(DEMO_DIR)

test: setup lint-imports
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# The layer contracts (pyproject.toml [tool.importlinter]), run from the checkout: dpstack/policy, envs,
# planners and ros are symlinks to the root folders, so the source tree has the installed package's shape.
lint-imports: setup
	$(VENV)/bin/lint-imports

# The wheel installed (not editable) into fresh venvs, run from outside the checkout: the full profile
# (--help, dataset info, a short eval) and the runtime profile (no torch: OnnxPolicy and the ROS 2 node).
check-install: setup
	bash .ci/check_install.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-data: setup
	$(PY) -m benchmarks.data_loader

bench-experts: setup
	$(PY) -m benchmarks.experts

# needs the two Push-T runs of the README's "Real-time samplers" section
SAMPLERS_STANDARD ?= runs/pusht-unet
SAMPLERS_STREAMING ?= runs/pusht-unet-streaming
bench-samplers: setup
	$(PY) -m benchmarks.samplers --task pusht --standard $(SAMPLERS_STANDARD) --streaming $(SAMPLERS_STREAMING)

bench-export: setup
	$(PY) -m benchmarks.export --standard $(SAMPLERS_STANDARD) --streaming $(SAMPLERS_STREAMING) --episodes 50

bench-ros: setup
	$(PY) -m benchmarks.ros

# one call per tick: the network's floor and ONNX Runtime settings, then the ROS node's control rate
PER_ACTION ?= runs/pusht-unet-stream1
bench-floor: setup
	$(PY) -m benchmarks.floor --checkpoint $(PER_ACTION) --calls 500

bench-ros-rate: setup
	$(PY) -m benchmarks.ros --part rate --rate-models runs/bench-export/pusht-streaming-15-start1 \
		runs/bench-export/pusht-ddim-4 --rates 10,50,100,200,500 --seconds 60 \
		--node-settings "" "realtime_priority=80"
	$(PY) -m benchmarks.ros --part rate --rate-models runs/bench-export/pusht-streaming-15-start1 \
		--rates 10,50,100,200 --seconds 60 --probe-hz 0 --node-settings "inference_lead=0.004 realtime_priority=80"

# few-step quality, paired with DDPM-100 on two seed blocks (a standard run and its consistency student)
DISTILLED ?= runs/pusht-consistency
bench-few-step: setup
	$(PY) -m benchmarks.few_step --standard $(SAMPLERS_STANDARD) --distilled $(DISTILLED) --seeds 100000,200000

# training steps/s against the reference Diffusion Policy loop (side venv: ../shared/peers/README.md)
REF_PYTHON ?= /tmp/refvenv/bin/python
REF_CODE ?= /tmp/refdp
bench-train: setup
	$(PY) -m benchmarks.train_throughput --part speed --reference-python $(REF_PYTHON) --reference-code $(REF_CODE)
	$(PY) -m benchmarks.train_throughput --part breakdown
	$(PY) -m benchmarks.train_throughput --part precision --steps 150
	$(PY) -m benchmarks.train_throughput --part scaling

bench-planners: setup
	$(PY) -m benchmarks.planners

bench-rollout: setup
	$(PY) -m benchmarks.rollout
	$(PY) -m benchmarks.rollout --overhead --envs 16 --steps 32000 --repeats 5

bench-rl: setup
	$(PY) -m benchmarks.rl

bench: bench-data bench-experts

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
