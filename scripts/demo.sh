#!/usr/bin/env bash
# Set up, build the demo data once (synthetic slides + a trained demo model), run the slide
# pipeline on it and print where the results are. Extra arguments go to the pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
if [[ ! -f demo_data/models/tumor.recipe.json ]]; then
  .venv/bin/python -m demo.make_demo --out demo_data
fi
.venv/bin/python -m pipelines.slide_inference \
  --slides demo_data/slides.csv \
  --model tumor=demo_data/models/tumor.pt2 --model_version tumor=demo-1 \
  --group_by case_id \
  --output results "$@"
