#!/usr/bin/env bash
# Create .venv and install the project with its test tools. Safe to run again: it only
# reinstalls when pyproject.toml changed. torch==2.13.0 goes first, on its own: that exact pin
# takes the CPU wheel where one is available, where a looser requirement pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pathbeam-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$want" > "$stamp"
fi
# Debian packages the tests use, installed where apt-get can be used (root, as in CI); elsewhere,
# or if apt fails, those tests skip, saying how to install them:
#   orthanc, orthanc-dicomweb: the real DICOMweb server the DICOM tests read slides from;
#   chromium: the headless browser the run report is checked in.
missing=()
[[ -x /usr/sbin/Orthanc ]] || missing+=(orthanc orthanc-dicomweb)
command -v chromium >/dev/null || missing+=(chromium)
if (( ${#missing[@]} )) && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      "${missing[@]}" >/dev/null; } ||
    echo "warning: apt-get could not install ${missing[*]}; the tests that need them will skip"
fi
