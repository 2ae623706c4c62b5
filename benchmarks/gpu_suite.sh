#!/usr/bin/env bash
# The GPU suite (issue 17, point 7): distillation step, importance batch, proxy vs HF Trainer, k-means, MiniLM
# embedding; one JSON line a measurement on stdout (and appended to $OUT/gpu_suite.jsonl when $OUT is set).
# What each section measures: the docstring of benchmarks/gpu_suite.py.
#
#   bash benchmarks/gpu_suite.sh            # on the GPU machine (one H200): <= 8 minutes in all
#   bash benchmarks/gpu_suite.sh --toy      # toy sizes on the CPU, the same code (CI: tests/test_gpu_suite.py)
#
# Each section runs in its own process under `timeout` (GPU memory and the distillation's memory cap do not carry
# over); a section that fails, is killed or runs out of time leaves a line with "error" and the next one runs.
# Environment: PYTHON (default python3), GPU_SUITE_TOY=1 (= --toy), GPU_SUITE_SECTIONS (a subset, in order),
# GPU_SUITE_BUDGET_S (the whole suite's seconds, default 470; the sections' own limits shrink to what is left).
set -u
cd "$(dirname "$0")/.." || exit 2

PY=${PYTHON:-python3}
TOY=${GPU_SUITE_TOY:-0}
for arg in "$@"; do
    case $arg in
        --toy) TOY=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "gpu_suite.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
SECTIONS=${GPU_SUITE_SECTIONS:-"distill importance proxy kmeans embed"}
BUDGET=${GPU_SUITE_BUDGET_S:-470}
KILL_AFTER=5
# seconds a section may run on the GPU (sum 440 + kill grace < 8 minutes); toy sections get 60 each
declare -A LIMIT=([distill]=160 [importance]=75 [proxy]=75 [kmeans]=75 [embed]=55)
FLAGS=()
if [ "$TOY" = 1 ]; then
    FLAGS=(--toy)
fi
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
fi

failed=0
for s in $SECTIONS; do
    limit=${LIMIT[$s]:-60}
    if [ "$TOY" = 1 ]; then
        limit=60
    fi
    left=$((BUDGET - SECONDS - KILL_AFTER))
    if [ "$left" -lt "$limit" ]; then
        limit=$left
    fi
    tmp=$(mktemp)
    if [ "$limit" -le 0 ]; then
        printf '{"section": "%s", "error": "not run: the suite budget of %s s is spent"}\n' "$s" "$BUDGET" >"$tmp"
        rc=1
    else
        timeout -k "$KILL_AFTER" "$limit" "$PY" benchmarks/gpu_suite.py --section "$s" "${FLAGS[@]}" >"$tmp"
        rc=$?
    fi
    if [ "$rc" -ne 0 ]; then
        failed=1
        if ! grep -q '"error"' "$tmp"; then  # the process could not say it: killed, timed out, crashed
            case $rc in
                124) why="timed out after $limit s" ;;
                137) why="killed (SIGKILL: $limit s + $KILL_AFTER s grace, or out of host memory)" ;;
                *) why="exited with status $rc" ;;
            esac
            printf '{"section": "%s", "error": "%s", "rc": %d}\n' "$s" "$why" "$rc" >>"$tmp"
        fi
    fi
    cat "$tmp"
    if [ -n "${OUT:-}" ]; then
        cat "$tmp" >>"$OUT/gpu_suite.jsonl"
    fi
    rm -f "$tmp"
done
exit "$failed"
