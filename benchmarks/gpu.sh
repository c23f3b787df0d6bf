#!/usr/bin/env bash
# GPU benchmarks in one prepared run, using only what the lent machine has (jax with CUDA, flax, optax,
# orbax, torch). Writes JSON and markdown to $OUT (or ./gpu_out) and prints the tables. Each section has
# its own time limit so one overrun does not lose the rest.
#   bash benchmarks/gpu.sh          the whole table (about 8 minutes)
#   bash benchmarks/gpu.sh throughput  the search-idle fraction at 1024 px and the bookkeeping per input
#   bash benchmarks/gpu.sh stylegan3   StyleGAN3 T and R at 256 and 1024 px beside the torch loop
#   bash benchmarks/gpu.sh missing  what RESULTS.md lists as not measured yet (9 minutes at most): the
#                                   most seeds that fit at 1024 (TF32), found by running sizes in fresh
#                                   processes from a guess; ours at 32 seeds (TF32); the PyTorch loop's
#                                   float32 speed at 48 seeds alone on the card; then, if time is left
#                                   and BEFORE names an older checkout (git archive of it), that code's
#                                   TF32 speed in the same lease
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
run() {  # run SECONDS NAME ARGS...: one bench invocation with its own limit (BENCH= another bench.py)
  local limit=$1 name=$2 left=$((BUDGET - SECONDS - 10)); shift 2
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -lt 30 ]; then echo "== $name skipped: the budget is spent"; return; fi
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" $PY "${BENCH:-benchmarks/bench.py}" "$@" --out "$OUT/$name.json" 2>&1 | grep -v "^WARNING" \
    | tee "$OUT/$name.log" | cut -c1-220
  pack
}

if [ "$MODE" = stylegan3 ]; then
  # StyleGAN3 beside the torch loop on the reference (float32 both sides), T and R at 256 and 1024.
  for c in t256 r256 t1024 r1024; do
    BENCH=benchmarks/stylegan3_bench.py run 150 "stylegan3_$c" --config "$c" --seeds 1 4 --chunk 2 --reps 3
  done
elif [ "$MODE" = throughput ]; then
  # The run as a whole: how idle the search is at 1024 px between batches (reading, encoding, journal),
  # and the per-input cost of the bookkeeping over folders of tiny inputs (not in the markdown table).
  BENCH=benchmarks/throughput.py run 240 throughput_idle_1024 --idle --resolution 1024 --inputs 16 --steps 20
  BENCH=benchmarks/throughput.py run 200 throughput_tiny --n 100 1000
elif [ "$MODE" = missing ]; then
  # In order of importance, each with its own limit, so that a long one cannot cost those after it, and a
  # late start cannot squeeze the one measurement #4 waits for.
  # TF32 is how PULSE runs on a GPU. No table rows: this process must hold no device memory while the
  # fresh processes try each size (~1 s of compile per seed on the H100).
  run 400 gpu_1024_tf32_max_fit --resolutions 1024 --seeds 32 --ours-seeds --torch-seeds --precision default \
    --max-fit --max-fit-tries 4 --max-fit-seconds 330
  # ours since the device loop's optimisation barrier (seventh session: 454.5 seed-steps/s before it)
  run 80 gpu_1024_tf32_ours --resolutions 1024 --seeds 32 --torch-seeds --reps 3 --chunk 3 --precision default
  # The PyTorch loop alone in its process, so that its largest batch has the card to itself (48 seeds
  # is its best in TF32 on an H100; float32 fits 32 in 46 GB, 48 untried).
  run 60 gpu_1024_fp32_torch --resolutions 1024 --seeds 48 --ours-seeds --reps 3 --chunk 3
  if [ -n "${BEFORE:-}" ]; then
    BENCH=$BEFORE/benchmarks/bench.py run 90 gpu_1024_tf32_ours_before --resolutions 1024 --seeds 32 \
      --torch-seeds --reps 3 --chunk 3 --precision default
  fi
else
  run 200 gpu_1024_fp32 --resolutions 1024 --seeds 1 8 32 64 --reps 3 --chunk 3
  run 80 gpu_1024_tf32 --resolutions 1024 --seeds 32 --reps 3 --chunk 3 --precision default --torch-tf32
  run 60 gpu_1024_dilated --resolutions 1024 --seeds 32 --torch-seeds --reps 3 --chunk 3 --transposed-conv dilated
  run 60 gpu_256_fp32 --resolutions 256 --seeds 1 8 64 --reps 3 --chunk 3
  run 100 gpu_compile_cache --resolutions 1024 --seeds 1 --torch-seeds --reps 1 --chunk 1 --compile-cache
  run 120 gpu_1024_max_fit --resolutions 1024 --seeds 32 --ours-seeds --torch-seeds --max-fit --max-fit-tries 2 \
    --max-fit-seconds 100
fi

$PY benchmarks/report.py "$OUT"/gpu_*.json > "$OUT/gpu_table.md" 2>"$OUT/report.err"
pack
cp "$OUT/gpu_table.md" "$OUT/gpu.txt" "$DEST/"
cat "$OUT/gpu_table.md" "$OUT/report.err"
