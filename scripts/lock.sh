#!/usr/bin/env bash
# Refresh the locks in requirements/ from pyproject.toml, print what changed, then run the test
# suite on the new dev lock. Run it to take a dependency upgrade on purpose (a security fix, a
# new Beam), after changing a dependency in pyproject.toml, and before each release.
#
#   scripts/lock.sh              keep every pin that still satisfies pyproject.toml
#   scripts/lock.sh --upgrade    re-resolve everything to the newest allowed versions
#   scripts/lock.sh --no-tests   the locks only
#   extra arguments go to pytest (e.g. -m "not slow")
#
# `uv pip compile` makes each lock, in pip-tools' requirements format with every file's sha256,
# for Python 3.11 on linux/x86_64 (the images' platform) whatever machine runs it. The worker lock
# is resolved against PyPI alone (its torch is the CUDA build); the launcher and dev locks are
# constrained to the worker's pins, so Beam (with its own cloudpickle) and dill (and every shared package) are
# equal in all three, and take torch's CPU build (/opt/wheels here, else PyTorch's CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.venv-lock
if [[ ! -x $TOOLS/bin/uv ]]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet "uv==0.13.9"
fi
tests=1
upgrade=()
while [[ ${1:-} == --* ]]; do
  case $1 in
    --upgrade) upgrade=(--upgrade) ;;
    --no-tests) tests=0 ;;
    *) break ;;
  esac
  shift
done
old=$(mktemp -d)
cp requirements/*.lock "$old"/ 2>/dev/null || true
compile=("$TOOLS/bin/uv" pip compile --quiet --no-config --generate-hashes
  --custom-compile-command "bash scripts/lock.sh"
  --python-version 3.11 --python-platform x86_64-manylinux_2_28
  --index-url https://pypi.org/simple "${upgrade[@]}")
if ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  cpu_torch=(--find-links /opt/wheels)
else
  cpu_torch=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi

"${compile[@]}" -o requirements/worker-gpu.lock pyproject.toml requirements/worker-gpu.in
python3 scripts/locks.py drop requirements/worker-gpu.lock onnxruntime
pins=$(mktemp --suffix=.txt)
python3 scripts/locks.py pins requirements/worker-gpu.lock | grep -v '^onnxruntime-gpu==' > "$pins"
"${compile[@]}" "${cpu_torch[@]}" -c "$pins" -o requirements/launcher.lock pyproject.toml
"${compile[@]}" "${cpu_torch[@]}" -c "$pins" --extra dev -o requirements/dev.lock pyproject.toml
for lock in requirements/*.lock; do python3 scripts/locks.py stamp "$lock"; done

echo "== what changed"
python3 scripts/locks.py diff "$old" requirements
python3 scripts/locks.py check
if (( tests )); then
  echo "== the suite, on the new dev lock"
  bash scripts/test.sh "$@"
fi
