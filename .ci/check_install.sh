#!/usr/bin/env bash
# `make check-install`: the wheel, installed (not editable) into fresh virtual environments and run
# from a folder outside the checkout, as a user would:
#   full profile     dpstack --help, dpstack dataset info <store>, one short dpstack eval
#   runtime profile  torch and the simulators absent; an exported policy through OnnxPolicy and
#                    through `dpstack ros policy` on real ROS 2 (scripts/check_runtime.py)
# The inputs are the committed v0.1 fixtures (a store, a checkpoint, an export written by dpstack 0.1.0).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
work=$(mktemp -d /tmp/dpstack-install-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
fixtures="$repo/tests/fixtures/v0_1"
export PIP_DISABLE_PIP_VERSION_CHECK=1
start=$SECONDS

pip_install() {  # pip install into venv $1, without this machine's warnings about its absent local indexes
  "$1/bin/pip" install --quiet "${@:2}" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}  # with pipefail, pip's own failure is the function's

"$repo/.venv/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$work/dist" "$repo"
wheel=$(ls "$work"/dist/dpstack-*.whl)
echo "built $(basename "$wheel"): $(unzip -l "$wheel" | grep -c 'dpstack/configs/.*\.yaml') config files inside"
if unzip -l "$wheel" | awk '{print $4}' | grep -E '^(policy|envs|planners|ros|configs)/' >/dev/null; then
  echo "the wheel installs a top-level name other than dpstack:"; unzip -l "$wheel" | awk '{print $4}' | grep -vE '^dpstack' | head
  exit 1
fi

cd "$work"  # outside the checkout: nothing can be imported from the source tree
echo "== runtime profile"
"$python" -m venv "$work/runtime"
pip_install "$work/runtime" "${wheel}[runtime]"
echo "runtime profile installed at $((SECONDS - start)) s: $("$work/runtime/bin/pip" list 2>/dev/null | wc -l) packages"
"$work/runtime/bin/dpstack" --help >/dev/null
"$work/runtime/bin/python" "$repo/scripts/check_runtime.py" "$fixtures/export" "$fixtures/expected.json"

echo "== full profile"
"$python" -m venv "$work/full"
pip_install "$work/full" torch==2.13.0
pip_install "$work/full" "${wheel}[full]"
echo "full profile installed at $((SECONDS - start)) s"
"$work/full/bin/python" -c "import dpstack, sys; assert 'site-packages' in dpstack.__file__, dpstack.__file__"
"$work/full/bin/dpstack" --help >/dev/null
"$work/full/bin/dpstack" dataset info "$fixtures/store.zarr" > info.json
"$work/full/bin/python" -c "import json; info = json.load(open('info.json')); assert info['episodes'] == 3, info"
"$work/full/bin/dpstack" eval checkpoint="$fixtures/checkpoint" out="$work/eval" episodes=2 num_envs=1 videos=0 \
  sampler=ddim sampler.num_inference_steps=3 progress=false
"$work/full/bin/python" -c "import json; r = json.load(open('$work/eval/eval.json')); assert r['episodes'] == 2, r; print('eval:', r['mean_score'])"
echo "check-install: ok in $((SECONDS - start)) s"
