#!/usr/bin/env bash
# LoRA training against full fine-tuning on SD 1.5 shapes (random weights from
# `ldm init`), 256x256, batch 1, rank 16, gradient checkpointing on: step time
# and peak memory of each, same machine, same run.
#   bench/lora_vs_full.sh BUILD_DIR VOCAB [WORK_DIR]
set -euo pipefail
B=$(realpath "$1"); VOCAB=$(realpath "$2"); W=${3:-$(mktemp -d)}
cd "$(dirname "$0")/.."
mkdir -p "$W/data"
[ -f "$W/sd15.safetensors" ] || "$B/ldm" init --config v1-inference.yaml "$W/sd15.safetensors" > /dev/null
python3 - "$W/data" <<'PY'
import sys, zlib, struct, random
d = sys.argv[1]
def png(path, w, h, seed):
    r = random.Random(seed)
    raw = b''.join(b'\x00' + bytes(r.randrange(256) for _ in range(3 * w)) for _ in range(h))
    c = lambda t, b: struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b) & 0xffffffff)
    open(path, 'wb').write(b'\x89PNG\r\n\x1a\n' + c(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) + c(b'IDAT', zlib.compress(raw)) + c(b'IEND', b''))
for i in range(4):
    png(f"{d}/{i}.png", 256, 256, i)
    open(f"{d}/{i}.txt", "w").write("a photo of a thing")
PY
common=(data.params.train.params.root="$W/data" data.params.batch_size=1 training.vocab="$VOCAB"
        model.params.unet_config.params.use_checkpoint=true lightning.trainer.max_steps=4 training.log_every=1
        training.checkpoint_every=1000 training.image_every=0 lightning.trainer.accumulate_grad_batches=1 lightning.trainer.precision=32)
for mode in lora full; do
  extra=()
  if [ $mode = full ]; then extra=(lora=null); else extra=(lora.base="$W/sd15.safetensors"); fi
  /usr/bin/time -v "$B/ldm" train configs/lora/sd15_lora.yaml -o "$W/run_$mode" "${common[@]}" "${extra[@]}" \
     > "$W/$mode.log" 2>&1 || { tail -5 "$W/$mode.log"; exit 1; }
  steps=$(tail -n 3 "$W/run_$mode/metrics.csv" | cut -d, -f1 | tr '\n' ' ')
  ips=$(python3 -c "import csv;r=list(csv.DictReader(open('$W/run_$mode/metrics.csv')));print(' '.join('%.2f'%(1/float(x['it_per_s'])) for x in r[1:]))")
  rss=$(grep "Maximum resident" "$W/$mode.log" | awk '{printf "%.2f", $6/1048576}')
  echo "$mode: seconds per step (after the first) $ips; peak memory $rss GB"
done
