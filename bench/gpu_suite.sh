#!/usr/bin/env bash
# One-shot GPU checks of vista-llm, for a short window on a bare GPU machine (no internet).
#
#   PYTHONPATH=. bash bench/gpu_suite.sh [--out DIR] [--dry-run]
#
# Run from the repository root. Every step is time-boxed with `timeout`; a failing step is recorded
# and the suite goes on. The whole suite stays within SUITE_BUDGET_S (460 s: <= 8 minutes on one
# H100/H200; each step's box shrinks to what is left). Everything goes to DIR (default
# bench/results/gpu/), at most 7 files:
#
#   summary.json   step, status (ok | failed | timeout | skipped), seconds, exit code, note
#   suite.log      the output of every step, in order
#   tests.xml      JUnit report of the gpu-marked tests (TF32 off)
#   checks.json    env info; duplicate-token, N=4096 and k-sweep checks (Triton vs reference)
#   sanitizer.log  compute-sanitizer memcheck + racecheck output
#   bench.json     kernel benchmark (bench/bench_kernels.py), eager and CUDA-graph replays
#   e2e.json       TTFT of a random 7B-shaped Qwen2 with pruning and a ViT-g-shaped scout
#
# Steps: env, gpu_tests, dups, large, ksweep, memcheck, racecheck, bench, e2e.
# --dry-run: the same steps on tiny shapes on CPU (CUDA hidden, Triton under TRITON_INTERPRET=1,
# the reference backend for the benchmark and the TTFT run); the check steps share one Python
# process there; the sanitizer steps are skipped (their cases still run, as "sanitize_cases").
# Exit status: 0 when no step failed or timed out, 1 otherwise, 2 on bad usage.
set -u

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_suite.sh: error: $*" >&2; exit 2; }

OUT="bench/results/gpu"
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (expected --out DIR, --dry-run)" ;;
  esac
done
[ -n "$OUT" ] || die "--out needs a folder"
mkdir -p "$OUT" 2>/dev/null || die "cannot create the output folder '$OUT'"
OUT="$(cd "$OUT" && pwd)"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || die "cannot enter the repository root $ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi
fi
command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' (set PYTHON=...)"

for f in summary.json suite.log tests.xml checks.json sanitizer.log bench.json e2e.json; do rm -f "$OUT/$f"; done
LOG="$OUT/suite.log"
SANLOG="$OUT/sanitizer.log"
REC="$(mktemp "${TMPDIR:-/tmp}/gpu_suite_rec.XXXXXX")"
STEP_OUT="$(mktemp "${TMPDIR:-/tmp}/gpu_suite_step.XXXXXX")"
trap 'rm -f "$REC" "$STEP_OUT"' EXIT

if [ "$DRY" = 1 ]; then
  BUDGET="${SUITE_BUDGET_S:-300}"  # generous: the boxes catch hangs; the dry run takes ~1 minute
  export CUDA_VISIBLE_DEVICES=""
  export TRITON_INTERPRET=1
else
  BUDGET="${SUITE_BUDGET_S:-460}"
  unset TRITON_INTERPRET
fi
export VISTA_NO_TF32=1
START="$(date +%s)"

now_s() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$REC"; }
say() { echo "[gpu_suite $(date -u +%H:%M:%S)] $*"; echo "[gpu_suite $(date -u +%H:%M:%S)] $*" >> "$LOG"; }

# run_step NAME BOX_S LOGFILE CMD...: time-boxed, output appended to LOGFILE, status recorded.
run_step() {
  local name="$1" box="$2" logf="$3"; shift 3
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 5 ]; then
    record "$name" skipped 0 "" "suite budget of ${BUDGET}s spent"; say "$name: skipped (budget spent)"; return 0
  fi
  [ "$box" -gt "$left" ] && box="$left"
  say "$name: start (box ${box}s)"
  echo "===== [$name] box ${box}s: $*" >> "$logf"
  local t0; t0="$(now_s)"
  timeout -k 10 "$box" "$@" > "$STEP_OUT" 2>&1
  local rc=$?
  local dt; dt="$(elapsed "$t0")"
  # at most ~3 MiB per step in the log (files coming back from the GPU machine are capped at 16 MiB)
  local size; size="$(wc -c < "$STEP_OUT")"
  if [ "$size" -gt 3145728 ]; then
    { head -c 1048576 "$STEP_OUT"; echo; echo "[... $((size - 3145728)) bytes cut ...]"; tail -c 2097152 "$STEP_OUT"; } >> "$logf"
  else
    cat "$STEP_OUT" >> "$logf"
  fi
  local status note=""
  case "$rc" in
    0) status=ok ;;
    77) status=skipped; note="$(grep -m1 '^SKIP:' "$STEP_OUT" | cut -c7- | tr -d '\t')" ;;
    124|137) status=timeout; note="killed after ${box}s" ;;
    *) status=failed; note="exit $rc: $(grep -v '^\s*$' "$STEP_OUT" | tail -n 1 | cut -c1-200 | tr -d '\t')" ;;
  esac
  record "$name" "$status" "$dt" "$rc" "$note"
  say "$name: $status in ${dt}s${note:+ ($note)}"
}

# ---------------------------------------------------------------------------------------------------
say "vista-llm GPU suite$( [ "$DRY" = 1 ] && echo ' (dry run, CPU)') -> $OUT, budget ${BUDGET}s"
SAN=""
if [ "$DRY" = 0 ]; then
  SAN="$(command -v compute-sanitizer 2>/dev/null || true)"
  [ -z "$SAN" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SAN=/usr/local/cuda/bin/compute-sanitizer
fi
CHECKS=(bench/gpu_checks.py)

# (a) environment
if [ "$DRY" = 1 ]; then
  # (a), (c), (d), (e) and the sanitizer cases in one Python process (start-up dominates on CPU)
  run_step checks_group 200 "$LOG" "$PY" "${CHECKS[@]}" env dups large ksweep sanitize --dry-run \
    --json "$OUT/checks.json" --record "$REC"
  g_status="$(awk -F '\t' '$1 == "checks_group" { s = $2 } END { print s }' "$REC")"
  for s in env dups large ksweep sanitize_cases; do
    if ! grep -q "^$s	" "$REC"; then
      case "$g_status" in
        skipped|timeout) record "$s" "$g_status" 0 "" "checks process $g_status before this step" ;;
        *) record "$s" failed 0 "" "the checks process ended before this step" ;;
      esac
    fi
  done
else
  run_step env 15 "$LOG" bash -c 'nvidia-smi || echo "nvidia-smi: not found"; exec "$0" "$@"' \
    "$PY" "${CHECKS[@]}" env --json "$OUT/checks.json"
fi

# (b) gpu-marked tests, TF32 off (bench/gpu_suite_plugin.py), ending cleanly at the box's deadline
if [ "$DRY" = 1 ]; then
  TESTS=(tests/kernels/test_prune_frames.py)  # the dry run checks the plumbing: gpu tests skip without CUDA
  BOX_T=120
else
  TESTS=()
  BOX_T=105
fi
left=$(( BUDGET - ($(date +%s) - START) )); [ "$BOX_T" -gt "$left" ] && BOX_T="$left"
VISTA_SUITE_DEADLINE=$(( $(date +%s) + BOX_T - 15 )) PYTHONPATH="$ROOT/bench:$PYTHONPATH" \
  run_step gpu_tests "$BOX_T" "$LOG" "$PY" -m pytest -m gpu -q -rfEs --tb=short -p no:cacheprovider -p gpu_suite_plugin \
  --junitxml "$OUT/tests.xml" ${TESTS[@]+"${TESTS[@]}"}

if [ "$DRY" = 0 ]; then
  # (c) duplicate tokens, (d) N=4096 D=3584, (e) k sweep: Triton vs reference
  run_step dups 35 "$LOG" "$PY" "${CHECKS[@]}" dups --json "$OUT/checks.json"
  run_step large 35 "$LOG" "$PY" "${CHECKS[@]}" large --json "$OUT/checks.json"
  run_step ksweep 30 "$LOG" "$PY" "${CHECKS[@]}" ksweep --json "$OUT/checks.json"
fi

# (f) compute-sanitizer, one small case per kernel
if [ "$DRY" = 1 ]; then
  record memcheck skipped 0 "" "dry run: no CUDA, compute-sanitizer not run (its cases ran: sanitize_cases)"
  record racecheck skipped 0 "" "dry run: no CUDA, compute-sanitizer not run (its cases ran: sanitize_cases)"
elif [ -z "$SAN" ]; then
  record memcheck skipped 0 "" "compute-sanitizer not found on PATH or in /usr/local/cuda/bin"
  record racecheck skipped 0 "" "compute-sanitizer not found on PATH or in /usr/local/cuda/bin"
else
  # PYTORCH_NO_CUDA_MEMORY_CACHING: every tensor its own allocation, so memcheck sees overruns
  for tool in memcheck racecheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step "$tool" 40 "$SANLOG" "$SAN" --tool "$tool" --error-exitcode 3 \
      --report-api-errors no --print-limit 50 "$PY" "${CHECKS[@]}" sanitize
  done
fi

# (g) kernel benchmark: per op and whole prune, triton vs batched reference vs per-frame loop
if [ "$DRY" = 1 ]; then
  run_step bench 60 "$LOG" "$PY" bench/bench_kernels.py --device cpu --frames 4 --tokens 17 --dims 32 --reps 1 \
    --json "$OUT/bench.json"
else
  run_step bench 75 "$LOG" "$PY" bench/bench_kernels.py --device cuda --frames 64 --tokens 196 --dims 1152 3584 \
    --quick --json "$OUT/bench.json"
fi

# (h) end-to-end TTFT: random 7B-shaped Qwen2 + ViT-g-shaped scout, retention 1.0/0.25/0.15/0.10
if [ "$DRY" = 1 ]; then
  run_step e2e 90 "$LOG" "$PY" bench/bench_ttft.py --dry-run --json "$OUT/e2e.json"
else
  run_step e2e 90 "$LOG" "$PY" bench/bench_ttft.py --device cuda --repeats 3 --json "$OUT/e2e.json"
fi

# ---------------------------------------------------------------------------------------------------
TOTAL="$(( $(date +%s) - START ))"
# summary.json and the table, in awk (no Python: the summary must survive a broken interpreter)
TMP_SUM="$(mktemp "$OUT/.tmp_summary.XXXXXX")"
awk -F '\t' -v dry="$DRY" -v total="$TOTAL" -v budget="$BUDGET" -v js="$TMP_SUM" '
  function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); gsub(/[\001-\037]/, " ", s); return s }
  $1 == "checks_group" && $2 == "ok" { next }  # its steps are listed one by one
  { n++; name[n] = $1; st[n] = $2; sec[n] = ($3 == "" ? 0 : $3); rc[n] = ($4 == "" ? "null" : $4); note[n] = $5
    if ($2 != "ok" && $2 != "skipped") bad = 1 }
  END {
    printf "{\n \"ok\": %s,\n \"dry_run\": %s,\n \"total_seconds\": %d,\n \"budget_seconds\": %d,\n \"steps\": [\n",
      (bad ? "false" : "true"), (dry == 1 ? "true" : "false"), total, budget > js
    for (i = 1; i <= n; i++)
      printf "  {\"step\": \"%s\", \"status\": \"%s\", \"seconds\": %.1f, \"rc\": %s, \"note\": \"%s\"}%s\n",
        esc(name[i]), esc(st[i]), sec[i], rc[i], esc(note[i]), (i < n ? "," : "") > js
    printf " ]\n}\n" > js
    printf "%-16s %-8s %8s  %s\n", "step", "status", "seconds", "note"
    for (i = 1; i <= n; i++) printf "%-16s %-8s %8.1f  %s\n", name[i], st[i], sec[i], note[i]
    printf "total %d s (budget %d s): %s\n", total, budget, (bad ? "FAILED" : "OK")
    exit bad
  }' "$REC" | tee -a "$LOG"
rc="${PIPESTATUS[0]}"
chmod 644 "$TMP_SUM" && mv -f "$TMP_SUM" "$OUT/summary.json" || { echo "gpu_suite.sh: error: could not write $OUT/summary.json" >&2; exit 1; }
echo "wrote $OUT/summary.json"
exit "$rc"
