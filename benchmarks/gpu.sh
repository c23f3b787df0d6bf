#!/usr/bin/env bash
# GPU benchmarks in one prepared run, using only what the lent machine has (jax with CUDA, flax, optax,
# orbax, torch). Writes JSON and markdown to $OUT (or ./gpu_out) and prints the tables. Each section has
# its own time limit so one overrun does not lose the rest.
#   bash benchmarks/gpu.sh          the whole table (about 8 minutes)
#   bash benchmarks/gpu.sh missing  what RESULTS.md lists as not measured yet (9 minutes at most): the
#                                   memory roofline, the most seeds that fit (predicted from the compiled
#                                   step's memory), strict float32 on both sides on this card
set -u
MODE=${1:-table}
cd "$(dirname "$0")/.."
# What comes back from a lent machine is a few files, so the logs and JSON are packed into one archive
# after every section (a section killed by its limit keeps what was measured before it).
DEST=${OUT:-gpu_out}
OUT=$(mktemp -d)
mkdir -p "$DEST"
pack() { tar -czf "$DEST/gpu_raw.tar.gz" -C "$OUT" . ; }
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

# The whole script ends within BUDGET seconds: a section gets what is left if that is less than its
# limit, and is skipped under 30 s.
BUDGET=${BUDGET:-540}
run() {  # run SECONDS NAME ARGS...: one bench invocation with its own limit
  local limit=$1 name=$2 left=$((BUDGET - SECONDS - 10)); shift 2
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -lt 30 ]; then echo "== $name skipped: the budget is spent"; return; fi
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" $B "$@" --out "$OUT/$name.json" 2>&1 | grep -v "^WARNING" | tee "$OUT/$name.log" | cut -c1-220
  pack
}

if [ "$MODE" = missing ]; then
  # In order of importance, each with its own limit, so that a long one cannot cost those before it.
  # TF32 (how PULSE runs on a GPU): how much of the memory ceiling the step uses (bfloat16 ran no faster
  # than TF32 on the H100, so arithmetic is not what bounds it)
  run 130 gpu_1024_tf32_roofline --resolutions 1024 --seeds 32 --torch-seeds --reps 3 --chunk 3 --precision default \
    --memory-roofline
  run 250 gpu_1024_tf32_max_fit --resolutions 1024 --ours-seeds --torch-seeds --reps 2 --chunk 2 \
    --precision default --max-fit
  # strict float32 on both sides in one process (ours ~21 GB and torch ~43 GB at 32 seeds on the H200)
  run 110 gpu_1024_fp32 --resolutions 1024 --seeds 32 --reps 3 --chunk 3
else
  run 250 gpu_1024_fp32 --resolutions 1024 --seeds 1 8 32 64 --reps 3 --chunk 3 --max-fit
  run 80 gpu_1024_tf32 --resolutions 1024 --seeds 32 --reps 3 --chunk 3 --precision default --torch-tf32
  run 60 gpu_1024_dilated --resolutions 1024 --seeds 32 --torch-seeds --reps 3 --chunk 3 --transposed-conv dilated
  run 60 gpu_256_fp32 --resolutions 256 --seeds 1 8 64 --reps 3 --chunk 3
  run 100 gpu_compile_cache --resolutions 1024 --seeds 1 --torch-seeds --reps 1 --chunk 1 --compile-cache
fi

$PY benchmarks/report.py "$OUT"/gpu_*.json > "$OUT/gpu_table.md" 2>"$OUT/report.err"
pack
cp "$OUT/gpu_table.md" "$OUT/gpu.txt" "$DEST/"
cat "$OUT/gpu_table.md" "$OUT/report.err"
