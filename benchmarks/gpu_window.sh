#!/usr/bin/env bash
# One GPU window as one prepared command: throughput, then as many pending paper-protocol
# leaderboard runs as fit in the budget, several at once, and everything worth keeping in at most
# 8 files under $OUT.
#
# On a fresh machine with PyTorch and torchvision and no network, from the repository root (the
# copied working tree, with .devdata carried: ../shared/tools/device-pack-data.sh writes it):
#
#     LTTOOLBOX_COMMIT=<sha of the copied tree> benchmarks/gpu_window.sh --budget 8
#
# Steps (each bounded in time, the whole within --budget minutes):
#   1. unpack .devdata/cifar10-jpg.tgz into ../shared/data (once), put the project on PYTHONPATH
#      (nothing is installed, nothing downloads);
#   2. environment.txt: GPU, driver, torch, CUDA MPS availability, commit;
#   3. throughput.md: benchmarks/throughput.py (trainer against the bare loop);
#   3b. stream.md: the streaming data path's img/s (224-px ResNet-50 step against the loader with
#      N workers; --stream none skips it);
#   4. concurrency.md: the aggregate img/s of K runs at once (and with CUDA MPS where it can be
#      started); the best K becomes the leaderboard's --jobs;
#   5. the leaderboard in priority order (CE, LDAM-DRW, balanced softmax, CS-CE-DRW, DRS
#      class-balanced, then the rest; every row's seed 0 before any seed 1), stopped --margin
#      seconds before the budget ends (running runs checkpoint; they are not reported);
#   6. results.tar.gz (every finished run's results.json, log.jsonl, recipe.yaml and runner records),
#      leaderboard.md, window.log.
# Merge the archive at home with benchmarks/leaderboard.py --merge (docs/performance.md).
#
# Options: --budget MIN (8) --suite FILE --protocol NAME (paper) --settings "IDS" (exp100)
#   --seeds "0 1 2" --priority "IDS" --runs DIR (runs/lb/gpu-window) --out DIR ($OUT)
#   --throughput "ARGS" --concurrency "1 2 4 8" --concurrency-recipe FILE --concurrency-steps N
#   (30) --margin SECONDS (45)
#   --stream "ARGS" | none   --set KEY=VALUE (repeatable, passed to every run)
# Environment: DEVDATA (.devdata/cifar10-jpg.tgz), SHARED_DATA (../shared/data).
set -uo pipefail

budget=8
suite=benchmarks/suites/cifar10_lt_core.yaml
protocol=paper
settings="exp100"
seeds="0 1 2"
priority="ce ldam_drw balanced_softmax cs_ce_drw drs_cb"
runs=runs/lb/gpu-window
out=${OUT:-runs/gpu-window-out}
throughput_args="--recipes configs/cifar10_lt/ce.yaml --steps 50 --repeats 3"
concurrency="1 2 4 8"
stream_args="--workers 4 8 16 --decoders pil torchvision --batch 128 --steps 10 --warmup 3 --repeats 1"
concurrency_recipe=configs/cifar10_lt/ce.yaml
concurrency_steps=30
margin=45
sets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --budget) budget=$2; shift 2 ;;
        --suite) suite=$2; shift 2 ;;
        --protocol) protocol=$2; shift 2 ;;
        --settings) settings=$2; shift 2 ;;
        --seeds) seeds=$2; shift 2 ;;
        --priority) priority=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --throughput) throughput_args=$2; shift 2 ;;
        --stream) stream_args=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --concurrency-recipe) concurrency_recipe=$2; shift 2 ;;
        --concurrency-steps) concurrency_steps=$2; shift 2 ;;
        --margin) margin=$2; shift 2 ;;
        --set) sets+=(--set "$2"); shift 2 ;;
        *) echo "gpu_window.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

start=$(date +%s)
deadline=$(python3 -c "print(int($start + 60 * $budget))")
mkdir -p "$out"
log="$out/window.log"
: > "$log"
say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$log"; }
left() { echo $(( deadline - $(date +%s) )); }
# A step may take at most this share of what is left (seconds, at least 10).
share() { python3 -c "print(max(10, int($(left) * $1)))"; }

# 1. data and code
devdata=${DEVDATA:-.devdata/cifar10-jpg.tgz}
shared=${SHARED_DATA:-../shared/data}
if [ -f "$devdata" ] && [ ! -d "$shared/cifar10-jpg" ]; then
    mkdir -p "$shared" && tar xzf "$devdata" -C "$shared" && say "unpacked $devdata into $shared"
elif [ -d "$shared/cifar10-jpg" ]; then
    say "data: $shared/cifar10-jpg is there"
else
    say "data: no $devdata and no $shared/cifar10-jpg (fine for recipes that need neither)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import lttoolbox" || { say "cannot import lttoolbox from $PWD"; exit 1; }

# 2. environment
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: ${LTTOOLBOX_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
    echo "budget: $budget min; suite $suite; protocol $protocol; settings $settings; seeds $seeds"
    python3 - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA "
      f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"gpu {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
else:
    print("gpu: none (CUDA not available)")
EOF
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv,noheader
    if command -v nvidia-cuda-mps-control >/dev/null; then echo "CUDA MPS: control present";
    else echo "CUDA MPS: not available (no nvidia-cuda-mps-control)"; fi
} > "$out/environment.txt" 2>&1
say "environment: $(tr '\n' ';' < "$out/environment.txt" | cut -c1-300)"

# 3. throughput
# shellcheck disable=SC2086
timeout "$(share 0.15)" python3 benchmarks/throughput.py $throughput_args \
    > "$out/throughput.md" 2>>"$log" || say "throughput: stopped or failed (see window.log)"
say "throughput: $(tail -n 1 "$out/throughput.md")"

# 3b. the streaming data path on this machine
if [ "$stream_args" != "none" ]; then
    # shellcheck disable=SC2086
    timeout "$(share 0.1)" python3 benchmarks/throughput.py --stream $stream_args \
        > "$out/stream.md" 2>>"$log" || say "stream: stopped or failed (see window.log)"
    say "stream: $(grep -c '^| loader' "$out/stream.md" 2>/dev/null) loader figures"
fi

# 4. concurrency
jobs=1
measure() {  # $1: label
    echo "## $1" >> "$out/concurrency.md"
    # shellcheck disable=SC2086
    timeout "$(share 0.2)" python3 benchmarks/throughput.py --concurrent $concurrency \
        --recipes "$concurrency_recipe" --steps "$concurrency_steps" --repeats 1 \
        >> "$out/concurrency.md" 2>>"$log"
}
: > "$out/concurrency.md"
if measure "without MPS"; then
    jobs=$(sed -n 's/^best concurrency: \([0-9]*\).*/\1/p' "$out/concurrency.md" | tail -n 1)
    plain=$(sed -n 's/^best concurrency: .*aggregate \([0-9,.]*\).*/\1/p' "$out/concurrency.md" \
        | tail -n 1 | tr -d ,)
    if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>>"$log"; then
        if measure "with MPS"; then
            mps=$(sed -n 's/^best concurrency: .*aggregate \([0-9,.]*\).*/\1/p' \
                "$out/concurrency.md" | tail -n 1 | tr -d ,)
            if python3 -c "import sys; sys.exit(0 if $mps > 1.05 * $plain else 1)"; then
                jobs=$(sed -n 's/^best concurrency: \([0-9]*\).*/\1/p' "$out/concurrency.md" \
                    | tail -n 1)
                say "MPS helps (${mps} against ${plain} img/s): kept on"
            else
                echo quit | nvidia-cuda-mps-control; say "MPS does not help: stopped"
            fi
        else
            echo quit | nvidia-cuda-mps-control
        fi
    fi
else
    say "concurrency: stopped or failed; one run at a time"
fi
jobs=${jobs:-1}
say "concurrency: $jobs runs at once"

# 5. leaderboard, stopped before the budget ends
minutes=$(python3 -c "print(round(($(left) - $margin) / 60, 2))")
if python3 -c "import sys; sys.exit(0 if $minutes > 0 else 1)"; then
    say "leaderboard: $minutes min"
    # shellcheck disable=SC2086
    python3 benchmarks/leaderboard.py "$suite" --protocol "$protocol" --settings $settings \
        --seeds $seeds --priority $priority --jobs "$jobs" --threads-per-job 1 \
        --budget "$minutes" --no-plots --out "$runs" --pack "$out/results.tar.gz" \
        "${sets[@]}" >> "$log" 2>&1
    say "leaderboard: exit $?"
else
    say "leaderboard: no time left"
    python3 benchmarks/leaderboard.py "$suite" --protocol "$protocol" --settings $settings \
        --seeds $seeds --report-only --no-plots --out "$runs" --pack "$out/results.tar.gz" \
        "${sets[@]}" >> "$log" 2>&1
fi

# 6. what comes back
[ -f "$runs/leaderboard.md" ] && cp "$runs/leaderboard.md" "$out/leaderboard.md"
say "done in $(( $(date +%s) - start )) s; files: $(ls "$out" | tr '\n' ' ')"
