#!/usr/bin/env bash
# GPU benchmarks in one prepared run, using only what the lent machine has (jax with CUDA, flax, optax,
# orbax, torch). Writes JSON and markdown to $OUT (or ./gpu_out) and prints the tables. Each section has
# its own time limit so one overrun does not lose the rest.
#   bash benchmarks/gpu.sh          the whole table (about 8 minutes)
#   bash benchmarks/gpu.sh missing  what RESULTS.md lists as not measured yet (about 8 minutes): torch's
#                                   best TF32 batch with the card to itself, the most seeds that fit,
#                                   bfloat16 and remat speed
set -u
MODE=${1:-table}
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
PY=${PY:-python3}
B="$PY benchmarks/bench.py"

# Our code needs flax's nnx.Dict (flax >= 0.12); if the machine's flax is older, use a carried wheel.
if ! $PY -c "from flax import nnx; nnx.Dict" 2>/dev/null && ls .whl/flax-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/flax-*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
$PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
timeout 60 $PY -c "
import sys; sys.path.insert(0, '.')
import jax, jax.numpy as jnp, pulse_jax as pj
m = pj.Model.random(pj.PRESETS['tiny_128'], 0)
print('smoke', m.synthesize(jnp.ones((1, 12, 512)), [jnp.zeros((1, *s)) for s in m.config.noise_shapes()]).shape)
" 2>&1 | tail -3 | tee -a "$OUT/gpu.txt"

run() {  # run SECONDS NAME ARGS...: one bench invocation with its own limit
  local limit=$1 name=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" $B "$@" --out "$OUT/$name.json" 2>&1 | grep -v "^WARNING" | tee "$OUT/$name.log" | cut -c1-220
}

if [ "$MODE" = missing ]; then
  # torch alone in its process (no jax runs), so that its largest TF32 batches get the whole card
  run 100 gpu_1024_tf32_torch_alone --resolutions 1024 --seeds 32 48 64 --ours-seeds --reps 3 --chunk 3 --torch-tf32
  run 200 gpu_1024_tf32_max_fit --resolutions 1024 --seeds 32 64 --torch-seeds --reps 3 --chunk 3 \
    --precision default --max-fit
  run 80 gpu_1024_bf16 --resolutions 1024 --seeds 32 --torch-seeds --reps 3 --chunk 3 --precision bfloat16
  run 80 gpu_1024_fp32_remat --resolutions 1024 --seeds 32 --torch-seeds --reps 3 --chunk 3 --remat
else
  run 250 gpu_1024_fp32 --resolutions 1024 --seeds 1 8 32 64 --reps 3 --chunk 3 --max-fit
  run 80 gpu_1024_tf32 --resolutions 1024 --seeds 32 --reps 3 --chunk 3 --precision default --torch-tf32
  run 60 gpu_1024_dilated --resolutions 1024 --seeds 32 --torch-seeds --reps 3 --chunk 3 --transposed-conv dilated
  run 60 gpu_256_fp32 --resolutions 256 --seeds 1 8 64 --reps 3 --chunk 3
  run 100 gpu_compile_cache --resolutions 1024 --seeds 1 --torch-seeds --reps 1 --chunk 1 --compile-cache
fi

$PY benchmarks/report.py "$OUT"/gpu_*.json > "$OUT/gpu_table.md" 2>"$OUT/report.err"
cat "$OUT/gpu_table.md" "$OUT/report.err"
