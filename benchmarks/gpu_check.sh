#!/usr/bin/env bash
# The GPU checks of issue 16 in one go (~5 min on an H200): the CUDA tests, the GPU benchmark table,
# then short runs of the CLI on the GPU (real session, an ensemble, System A at full size).
#
#   OUT=gpu_out bash benchmarks/gpu_check.sh [SESSION.mat]
#
# Logs and the table go to $OUT (default gpu_out). Each part has its own time limit and the
# script carries on after a failure; the summary at the end says which parts failed.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
DATA=${1:-../shared/data/rnn_export_Newton_08_14_2025_SC.mat}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
TMP=$(mktemp -d)
status=()

part() {  # part NAME SECONDS CMD...: run, log to $OUT/NAME.log, remember the exit status
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  status+=("$name rc=$rc $((SECONDS - t0))s")
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import sys, torch, lightning; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning', lightning.__version__)"
} 2>&1 | tee "$OUT/env.log"

part tests ${TESTS_LIMIT:-180} $PY -m pytest -q -p no:cacheprovider -o addopts="" -k cuda tests/test_gpu.py \
  "tests/test_losses.py::test_cuda_matches_cpu_without_host_sync"
part bench ${BENCH_LIMIT:-240} $PY -m benchmarks.run --device cuda --quick --data "$DATA" --out "$OUT/bench.md" ${BENCH_ARGS:-}
[ -n "${SKIP_CLI:-}" ] || part cli ${CLI_LIMIT:-150} bash -c "
  $PY -m eirnn.train data=sc_mat data.path=$DATA trainer.accelerator=gpu trainer.max_epochs=3 logger=none \
      hydra.run.dir=$TMP/sc; echo RC_sc_mat=\$?
  $PY -m eirnn.train data=sc_mat data.path=$DATA trainer.accelerator=gpu trainer.max_epochs=2 ensemble.size=3 \
      logger=none hydra.run.dir=$TMP/ens; echo RC_ensemble=\$?
  $PY -m eirnn.train experiment=system_a seed=1 trainer.accelerator=gpu trainer.max_epochs=1 data.n_train=64 \
      data.n_val=32 logger=none hydra.run.dir=$TMP/sysa; echo RC_system_a=\$?"
# plain jobs sharing the GPU: one lab_ltrial_21 configuration alone, then 4 at once (median epoch time of each)
part share ${SHARE_LIMIT:-150} bash -c "
  run() { $PY -m eirnn.train experiment=lab_ltrial_21 +variant=\$1 data=sc_mat data.path=$DATA trainer.accelerator=gpu \
          trainer.max_epochs=25 logger=none fit_spike_readout=false threads=${SHARE_THREADS:-2} hydra.run.dir=\$2 >\$2.log 2>&1; }
  t0=\$SECONDS; run gradbal_scale_0.5 $TMP/alone; echo alone_wall_s=\$((SECONDS - t0))
  t0=\$SECONDS
  for v in gradbal_scale_0.5 gradbal_eps_0.05 gradbal_scale_0.25 gradbal_eps_0.1; do run \$v $TMP/share_\$v & done; wait
  echo four_at_once_wall_s=\$((SECONDS - t0))
  $PY -c 'import json, sys, statistics as st
for p in (a.rstrip(\"/\") for a in sys.argv[1:]):
    h = json.load(open(p + \"/training_log.json\"))
    print(p.rsplit(\"/\", 1)[-1], len(h), \"epochs, median epoch s\", round(st.median(r[\"epoch_time_s\"] for r in h[2:]), 4))' $TMP/alone $TMP/share_*/"
echo "=== summary"
printf '%s\n' "${status[@]}" | tee "$OUT/summary.log"
