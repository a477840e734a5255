#!/usr/bin/env bash
# The main job: train a KL autoencoder and then a class-conditional latent
# diffusion model on Fashion-MNIST, sample 100 images per class with
# classifier-free guidance, and measure them with a Fashion-MNIST classifier.
set -euo pipefail
BUILD=${1:-build}
OUT=${LDM_OUT:-outputs/fashion}
LDM="$BUILD/ldm"
t0=$(date +%s)
# this job's own run directories start fresh (the classifier cache is kept)
rm -rf "$OUT/autoencoder" "$OUT/ldm" "$OUT/samples"
mkdir -p "$OUT"

echo "== 1/4 autoencoder (configs/fashion/autoencoder.yaml)"
"$LDM" train configs/fashion/autoencoder.yaml -o "$OUT/autoencoder"
echo "== 2/4 latent diffusion (configs/fashion/ldm.yaml)"
"$LDM" train configs/fashion/ldm.yaml -o "$OUT/ldm" \
  "model.params.first_stage_config.params.ckpt_path=$OUT/autoencoder"
echo "== 3/4 sampling 100 images per class (DPM++ 2M, 25 steps, guidance 3)"
for c in 0 1 2 3 4 5 6 7 8 9; do
  "$LDM" sample --config "$OUT/ldm/config.yaml" --ckpt "$OUT/ldm" --class "$c" -b 100 \
    --sampler dpm++2m --steps 25 --cfg-scale 3 --seed "$c" --no-grid -o "$OUT/samples/$c" 2>&1 | tail -n 1
done
echo "== 4/4 evaluation"
"$LDM" fashion-eval --samples "$OUT/samples" --autoencoder "$OUT/autoencoder" --grid "$OUT/samples.png" \
  --json "$OUT/eval.json" --classifier "$OUT/classifier.safetensors"
t1=$(date +%s)
echo
echo "done in $(( (t1 - t0) / 60 )) min $(( (t1 - t0) % 60 )) s"
echo "samples:   $OUT/samples/<label>/*.png"
echo "grid:      $OUT/samples.png (one row per class), $OUT/samples_compare.png (real | reconstruction | sample)"
echo "training:  $OUT/autoencoder, $OUT/ldm (metrics.csv, tensorboard/, images/, checkpoints/)"
echo "figures:   $OUT/eval.json"
