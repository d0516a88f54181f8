#!/usr/bin/env bash
# Create .venv and install the project with its test tools from the lock, requirements/dev.lock
# (every package at an exact version, each file checked against its sha256). Safe to run again:
# it reinstalls only when the lock or pyproject.toml changed. torch is its CPU build
# (2.13.0+cpu): from /opt/wheels where that file lies, else from PyPI and PyTorch's CPU index.
# scripts/lock.sh refreshes the locks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements/dev.lock
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pathbeam-installed
want=$(cat pyproject.toml "$LOCK" | sha256sum | cut -d' ' -f1)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  extra=()
  if ! ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    extra=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
  .venv/bin/python -m pip install --quiet "pip==26.3"
  .venv/bin/python -m pip install --quiet --require-hashes --no-deps "${extra[@]}" -r "$LOCK"
  .venv/bin/python -m pip install --quiet --no-deps -e .
  .venv/bin/python scripts/locks.py record "$LOCK" >/dev/null
  .venv/bin/python scripts/locks.py verify "$LOCK"
  echo "$want" > "$stamp"
fi
# Debian packages the tests use, installed where apt-get can be used (root, as in CI); elsewhere,
# or if apt fails, those tests skip, saying how to install them:
#   orthanc, orthanc-dicomweb: the real DICOMweb server the DICOM tests read slides from;
#   chromium: the headless browser the run report is checked in.
#   nodejs, npm: install the slide viewer's library (OpenSeadragon) from the npm registry.
missing=()
[[ -x /usr/sbin/Orthanc ]] || missing+=(orthanc orthanc-dicomweb)
command -v chromium >/dev/null || missing+=(chromium)
command -v npm >/dev/null || missing+=(nodejs npm)
if (( ${#missing[@]} )) && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      "${missing[@]}" >/dev/null; } ||
    echo "warning: apt-get could not install ${missing[*]}; the tests that need them will skip"
fi
# The Pub/Sub emulator the stream tests publish notifications through: Google's Debian package
# (on the machine image; from Google's apt repository elsewhere), and a Java runtime for it.
# Installed on its own, so that a machine without that repository still gets the rest.
emulator=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
if [[ ! -x $emulator || -z "$(command -v java)" ]] && command -v apt-get >/dev/null &&
  [[ "$(id -u)" == 0 ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq google-cloud-cli-pubsub-emulator \
    default-jre-headless >/dev/null 2>&1 ||
    echo "warning: apt-get could not install the Pub/Sub emulator; the stream tests will skip"
fi
# The slide viewer's library, from the npm registry at the version viewer/package-lock.json pins
# (its sha512 checked); every run copies it beside its viewer pages, so they open offline.
lib=viewer/node_modules/openseadragon/build/openseadragon/openseadragon.min.js
if [[ ! -f $lib || viewer/package-lock.json -nt $lib ]]; then
  npm ci --prefix viewer --no-audit --no-fund --loglevel=error >/dev/null
  touch "$lib"
fi
