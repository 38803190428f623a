#!/usr/bin/env bash
# Remakes the shipped demo bundle (models/demo/bundle) from nothing but this repository:
# a linesim dataset, two Ultralytics training stages on the CPU, ONNX export, evaluation
# on a holdout the detector never saw, and the bundle with its golden set.
# About 80 minutes on 2 CPU cores. Run from the repository root with the train extra
# installed (`make test` sets that up): bash models/demo/remake.sh [WORK_DIR]
set -euo pipefail
work=${1:-runs/demo}
lg=".venv/bin/lineguard"
mkdir -p "$work"

# Data: 1000 train + 200 val parts (seed 0) to train on; 300 parts of seed 1 as holdout.
$lg linesim export "$work/ds" --train 1000 --val 200 --seed 0
$lg linesim export "$work/holdout" --train 0 --val 300 --seed 1

# Stage 1: YOLO11 "pico" (cloud/model_cfg/lineguard-pico.yaml) from scratch, 40 epochs at 256 px.
$lg cloud train --data "$work/ds/data.yaml" --holdout "$work/holdout/data.yaml" \
  --out "$work/stage1-bundle" --name stage1 --version 1 --label stage1 \
  --epochs 40 --imgsz 256 --batch 16 --work-dir "$work/runs"

# Stage 2: fine-tune stage 1's weights for 20 epochs with a lower learning rate.
$lg cloud train --data "$work/ds/data.yaml" --holdout "$work/holdout/data.yaml" \
  --out models/demo/bundle --name demo --version 1 --label linesim-yolo11pico-256 \
  --model "$work/runs/stage1/weights/best.pt" --epochs 20 --imgsz 256 --serve-imgsz 320 \
  --batch 16 \
  --optimizer AdamW --lr0 0.0005 --warmup-epochs 1 --close-mosaic 10 --work-dir "$work/runs2"

$lg bundle verify models/demo/bundle
$lg eval models/demo/bundle "$work/holdout/data.yaml"
