#!/usr/bin/env bash
# The main job: train a KL autoencoder and then a class-conditional latent
# diffusion model on Fashion-MNIST, sample 100 images per class with
# classifier-free guidance, and measure them with a Fashion-MNIST classifier.
set -euo pipefail
BUILD=${1:-build}
OUT=${LDM_OUT:-outputs/fashion}
LDM="$BUILD/ldm"
AE_CFG=configs/fashion/autoencoder.yaml
LDM_CFG=configs/fashion/ldm.yaml
# Trainings run as NPROC data-parallel ranks (and sampling as NPROC lanes),
# each on cores/NPROC threads, the per-rank batch cut so the global batch is
# the config's: on 2 cores, two single-threaded ranks step 1.5x faster than
# one process on two threads (README: the main job).
NPROC=${LDM_NPROC:-2}
batch_of() { awk '/^ *batch_size:/ {print $2; exit}' "$1"; }
AE_BATCH=$(batch_of "$AE_CFG")
LDM_BATCH=$(batch_of "$LDM_CFG")
if ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || (( AE_BATCH % NPROC || LDM_BATCH % NPROC )); then
  echo "LDM_NPROC=$NPROC: expected a positive divisor of both batch sizes ($AE_BATCH, $LDM_BATCH)" >&2
  exit 2
fi
THREADS=$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))
# The LDM trains under bf16 autocast where the CPU computes in bf16 (AVX512-BF16 or
# AMX: 1.36x the float32 step on a Zen 4), in float32 elsewhere, where bf16 would
# be emulated (README: the main job). LDM_PRECISION=32|bf16 chooses.
LDM_PRECISION=${LDM_PRECISION:-$(grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && echo bf16 || echo 32)}
if [[ "$LDM_PRECISION" != 32 && "$LDM_PRECISION" != bf16 ]]; then
  echo "LDM_PRECISION=$LDM_PRECISION: expected 32 or bf16" >&2
  exit 2
fi
t0=$(date +%s)
phases=""  # "phase M min S s; ..." for the summary line
mark() { local now; now=$(date +%s); phases+="$1 $(( (now - tp) / 60 )) min $(( (now - tp) % 60 )) s; "; tp=$now; }
tp=$t0
# this job's own run directories start fresh (the classifier cache is kept)
rm -rf "$OUT/autoencoder" "$OUT/ldm" "$OUT/samples"
mkdir -p "$OUT"

echo "== 1/4 autoencoder ($AE_CFG, $NPROC ranks)"
"$LDM" train "$AE_CFG" -o "$OUT/autoencoder" --nproc "$NPROC" "data.params.batch_size=$((AE_BATCH / NPROC))"
mark autoencoder
echo "== 2/4 latent diffusion ($LDM_CFG, $NPROC ranks, precision $LDM_PRECISION)"
"$LDM" train "$LDM_CFG" -o "$OUT/ldm" --nproc "$NPROC" "data.params.batch_size=$((LDM_BATCH / NPROC))" \
  "lightning.trainer.precision=$LDM_PRECISION" \
  "model.params.first_stage_config.params.ckpt_path=$OUT/autoencoder"
mark "latent diffusion (caching included)"
echo "== 3/4 sampling 100 images per class (DPM++ 2M Karras, 25 steps, guidance 5 where 0.5 < sigma <= 3)"
# Guidance only at mid-to-low noise (0.5 < sigma <= 3 of 0.04..84): the class details get
# sharpened while the high-noise steps keep the data's variety and the last ones the
# data's texture (README: LDM experiments)
sample_lane() {  # classes lane, lane + NPROC, ...
  for ((c = $1; c < 10; c += NPROC)); do
    OMP_NUM_THREADS=$THREADS "$LDM" sample --config "$OUT/ldm/config.yaml" --ckpt "$OUT/ldm" --class "$c" -b 100 \
      --sampler dpm++2m --schedule karras --steps 25 --cfg-scale 5 --cfg-interval 0.5,3 --seed "$c" --no-grid -o "$OUT/samples/$c" 2>&1 | tail -n 1
  done
}
pids=()
for ((lane = 0; lane < NPROC && lane < 10; ++lane)); do
  sample_lane "$lane" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done  # a failed lane stops the job (set -e)
mark sampling
echo "== 4/4 evaluation"
"$LDM" fashion-eval --samples "$OUT/samples" --autoencoder "$OUT/autoencoder" --grid "$OUT/samples.png" \
  --json "$OUT/eval.json" --classifier "$OUT/classifier.safetensors"
mark "evaluation (classifier training included when not cached)"
t1=$(date +%s)
echo
echo "done in $(( (t1 - t0) / 60 )) min $(( (t1 - t0) % 60 )) s: ${phases%; }"
echo "samples:   $OUT/samples/<label>/*.png"
echo "grid:      $OUT/samples.png (one row per class), $OUT/samples_compare.png (real | reconstruction | sample)"
echo "training:  $OUT/autoencoder, $OUT/ldm (metrics.csv, tensorboard/, images/, checkpoints/)"
echo "figures:   $OUT/eval.json"
