#!/usr/bin/env bash
# The main job, from a fresh clone: create/reuse .venv, install mrcnn, train Mask R-CNN on
# synthetic shapes (CPU, no downloads), evaluate with pycocotools, draw detections.
# Outputs: runs/demo/{metrics.json,detections.png,weights.weights.h5,config.json,saved_model/,logs/}
# Options: DEMO_MINUTES (training budget, default 8), DEMO_OUT (default runs/demo).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT="${DEMO_OUT:-runs/demo}"
echo "[demo] training + evaluation; outputs in $OUT"
.venv/bin/python -m samples.shapes.demo --out "$OUT" --minutes "${DEMO_MINUTES:-8}"
echo "[demo] exporting a SavedModel (stock TF ops, TF Serving signatures) to $OUT/saved_model"
.venv/bin/python -m mrcnn export --config "$OUT/config.json" --weights "$OUT/weights.weights.h5" \
  --output "$OUT/saved_model" --no-version-dir --overwrite
echo "[demo] done: $OUT/metrics.json $OUT/detections.png $OUT/saved_model"
