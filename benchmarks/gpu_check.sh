#!/usr/bin/env bash
# The GPU check (docs/benchmarks.md, "GPU check"): on a machine with a CUDA GPU, from the repo's
# root, in under 8 minutes:
#   1. the CUDA tests (pytest -m cuda: device resolution, the loop and every method on the GPU,
#      the fast decoder's bf16 top-k against the fp32 reference, 2-GPU DDP where there are 2);
#   2. trains `tiny` (IDGenRec) and `sasrec-tiny` with --device cuda (and sasrec-tiny in bf16);
#   3. times the decode benchmark (benchmarks.decode, fast path vs reference, and in bf16) on an
#      ml100k-sized IDGenRec bundle: $DECODE_BUNDLE if given, else the ml100k preset trained
#      briefly here (the model and the catalog of ml100k; the weights of a short run);
#   4. writes gpu-report.md and gpu-report.json (and the logs) to $OUT, or to the folder given
#      as the first argument (default gpu-check/).
#
# Python: $PYTHON, else .venv/bin/python, else python3 -- the first whose torch sees a GPU. It
# fails at once, saying so, where none does. Packages that Python lacks can come as wheels in
# .whl/ (installed with pip --no-index into a scratch folder; docs/benchmarks.md lists them).
# GPU_CHECK_BUDGET_S (default 450) bounds the whole run: a step that would start past it is
# skipped, and each step's timeout is cut to what is left. GPU_CHECK_DEVICE=cpu runs the same
# steps on the CPU (a dry run of the script itself: the CUDA tests skip, figures mean nothing).
# GPU_CHECK_SKIP: step names not to run (e.g. "train_tiny train_ml100k_short" to time the decode
# of a carried DECODE_BUNDLE alone).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT_DIR=${1:-${OUT:-gpu-check}}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/genrec-gpu-check.XXXXXX)}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
mkdir -p "$OUT_DIR" "$WORK"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG=$OUT_DIR/gpu-check.log
STEPS=$WORK/steps.tsv
: >"$LOG"
: >"$STEPS"
START=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

say() { echo "gpu_check: $*" | tee -a "$LOG"; }

# ---------------------------------------------------------------- a Python whose torch sees a GPU
PY=
tried=()
for candidate in ${PYTHON:-} .venv/bin/python python3; do
    command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
    tried+=("$candidate")
    if "$candidate" -c "import sys, torch; sys.exit(0 if '$DEVICE' == 'cpu' or torch.cuda.is_available() else 1)" \
        >/dev/null 2>&1; then
        PY=$candidate
        break
    fi
done
if [ -z "$PY" ]; then
    say "no GPU: torch.cuda.is_available() is False for every Python tried (${tried[*]:-none found})."
    say "Run this on a machine with a CUDA GPU and a CUDA build of torch (set PYTHON to its python)."
    exit 2
fi

export PYTHONPATH=$REPO
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    say "installing the wheels in .whl/ into $WORK/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        .whl/*.whl >>"$LOG" 2>&1 || { say "installing .whl/ failed (see $LOG)"; exit 3; }
    export PYTHONPATH=$WORK/site:$REPO
fi
missing=$("$PY" - <<'EOF'
import importlib, importlib.util
names = ["transformers", "tokenizers", "safetensors", "marisa_trie", "numpy", "matplotlib", "tqdm", "pytest"]
lacking = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception:
        lacking.append(name)
if importlib.util.find_spec("recbole") is None:  # its ml-100k files
    lacking.append("recbole")
print(" ".join(lacking))
EOF
)
if [ -n "$missing" ]; then
    say "$PY lacks: $missing. Bring them as wheels in .whl/ (docs/benchmarks.md, 'GPU check')."
    exit 3
fi
"$PY" - <<'EOF' | tee -a "$LOG"
import torch, transformers
gpu = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}" if torch.cuda.is_available() else "no GPU"
print(f"gpu_check: {gpu}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")
EOF

# ---------------------------------------------------------------- the steps
# step NAME SECONDS COMMAND...: runs it with a timeout cut to the budget left; records
# name, status, seconds in $STEPS and the output in $WORK/NAME.log (and the log).
FAILED=0
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        printf '%s\tskipped (GPU_CHECK_SKIP)\t0\n' "$name" >>"$STEPS"
        return 0
    fi
    if [ "$left" -lt 20 ]; then
        printf '%s\tskipped (budget spent)\t0\n' "$name" >>"$STEPS"
        say "$name: skipped, the ${BUDGET} s budget is spent"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "$name: up to ${limit} s: $*"
    local t0=$(date +%s) rc=0
    timeout "$limit" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    local took=$(($(date +%s) - t0)) status=ok
    [ "$rc" -eq 124 ] && status="timed out after ${limit} s"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && status="failed (exit $rc)"
    [ "$status" != ok ] && FAILED=1
    printf '%s\t%s\t%s\n' "$name" "$status" "$took" >>"$STEPS"
    tail -n 25 "$WORK/$name.log" >>"$LOG"
    say "$name: $status in ${took} s"
}

step cuda_tests 150 "$PY" -m pytest -q -m cuda -p no:cacheprovider \
    tests/genrec/test_device.py tests/training/test_device_training.py tests/training/test_ddp.py \
    tests/service/test_device_setting.py
step train_sasrec_tiny 90 "$PY" -m training.cli run --config sasrec-tiny --out "$WORK/sasrec-tiny" \
    --device "$DEVICE" --no-progress
step train_sasrec_tiny_bf16 90 "$PY" -m training.cli run --config sasrec-tiny --out "$WORK/sasrec-tiny-bf16" \
    --device "$DEVICE" --precision bf16 --no-progress
step train_tiny 180 "$PY" -m training.cli run --config tiny --out "$WORK/tiny" --device "$DEVICE" --no-progress
DECODE_BUNDLE=${DECODE_BUNDLE:-}
if [ -z "$DECODE_BUNDLE" ]; then
    DECODE_BUNDLE=$WORK/ml100k-short
    step train_ml100k_short 150 "$PY" -m training.cli run --config ml100k --out "$DECODE_BUNDLE" --device "$DEVICE" \
        --no-progress --set generator.warmup_epochs=3 --set recommender.epochs=1 --set eval.users=100
fi
step decode_ml100k 120 "$PY" -m benchmarks.decode --bundle "$DECODE_BUNDLE" --device "$DEVICE" --bf16 \
    --users 200 --latency-users 32 --out "$OUT_DIR/decode_ml100k_gpu.json"

# ---------------------------------------------------------------- the report
"$PY" - "$WORK" "$OUT_DIR" "$STEPS" "$DECODE_BUNDLE" "$(($(date +%s) - START))" <<'EOF' | tee -a "$LOG"
import json, sys
from pathlib import Path

import torch

work, out, steps_file, decode_bundle, wall = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
steps = [dict(zip(("step", "status", "seconds"), line.split("\t"), strict=True)) for line in steps_file.read_text().splitlines()]
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (a dry run on the CPU)"
report = {"gpu": gpu, "gpus": torch.cuda.device_count(), "torch": torch.__version__,
          "cuda": torch.version.cuda, "wall_s": wall, "steps": steps, "trainings": {}, "decode": None}
tests = (work / "cuda_tests.log")
if tests.is_file():
    report["cuda_tests"] = next((line for line in reversed(tests.read_text().splitlines()) if " passed" in line
                                 or " failed" in line or " skipped" in line), "")
for name in ("sasrec-tiny", "sasrec-tiny-bf16", "tiny", "ml100k-short"):
    path = work / name / "eval.json"
    if path.is_file():
        result = json.loads(path.read_text())
        report["trainings"][name] = {"test": result.get("test"), "timings_s": result.get("timings_s")}
decode = out / "decode_ml100k_gpu.json"
if decode.is_file():
    report["decode"] = json.loads(decode.read_text())
    report["decode"]["bundle"] = decode_bundle
(out / "gpu-report.json").write_text(json.dumps(report, indent=2))

lines = [f"# GPU check: {report['gpu']} x{report['gpus']}, torch {report['torch']} (CUDA {report['cuda']})", "",
         f"Whole run: {wall} s.", "", "| step | status | s |", "|---|---|---|"]
lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in steps]
if report.get("cuda_tests"):
    lines += ["", f"CUDA tests: `{report['cuda_tests'].strip()}`"]
if report["trainings"]:
    lines += ["", "| bundle | test hr@10 | test ndcg@10 | training s | total s |", "|---|---|---|---|---|"]
    for name, t in report["trainings"].items():
        test, timings = t["test"] or {}, t["timings_s"] or {}
        trained = sum(v for k, v in timings.items() if k not in ("total", "evaluation", "data_and_tokenizer"))
        lines.append(f"| {name} | {test.get('hr@10', float('nan')):.4f} | {test.get('ndcg@10', float('nan')):.4f} "
                     f"| {trained:.1f} | {timings.get('total', float('nan')):.1f} |")
d = report["decode"]
if d:
    lines += ["", f"Decode ({d['users']} test users, k={d['k']}, beams={d['num_beams']}, bundle {decode_bundle}):", "",
              "| | reference | fast | speedup |", "|---|---|---|---|",
              f"| test set s | {d['ref_eval_s']:.2f} | {d['fast_eval_s']:.2f} | {d['speedup_eval']:.1f}x |",
              f"| batch 1 ms | {d['ref_latency_batch1_ms']:.1f} | {d['fast_latency_batch1_ms']:.1f} | {d['speedup_batch1']:.1f}x |",
              f"| batch 32 ms | {d['ref_latency_batch32_ms']:.1f} | {d['fast_latency_batch32_ms']:.1f} | {d['speedup_batch32']:.1f}x |",
              "", f"fp32 fast path: identical top-k {d['identical_topk_users']}/{d['users']} "
              f"({d['identical_up_to_ties_users']} up to ties), max score diff {d['max_score_diff']:.2e}; "
              f"fast / floor {d['floor_ratio']:.2f}, at batch 1 {d['floor_ratio_batch1']:.2f}."]
    if "bf16_fast_eval_s" in d:
        lines += ["", f"bf16 fast path vs the fp32 reference: test set {d['bf16_fast_eval_s']:.2f} s, identical top-k "
                  f"{d['bf16_identical_topk_users']}/{d['users']}, same sets {d['bf16_same_topk_sets_users']}, "
                  f"least overlap {d['bf16_min_topk_overlap']:.2f}, max relative score diff "
                  f"{d['bf16_max_rel_score_diff']:.2e} (tests/genrec/test_device.py allows 1e-2 and overlap 0.8)."]
(out / "gpu-report.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
for name in cuda_tests train_tiny; do  # with the report, the log and the decode JSON and PNG: 7 files
    [ -f "$WORK/$name.log" ] && cp "$WORK/$name.log" "$OUT_DIR/$name.log"
done
say "report: $OUT_DIR/gpu-report.md ($(($(date +%s) - START)) s)"
exit $FAILED
