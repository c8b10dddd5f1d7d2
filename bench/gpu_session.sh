#!/usr/bin/env bash
# One part of a GPU session, sized for a call of at most 10 minutes on a lent H100/H200 (no network;
# torch, triton, pytest, pytest-benchmark and pytest-xdist already there). From the repository root:
#
#   bash bench/gpu_session.sh tests      # GPU-only tests, then the kernel tests compiled for the card
#   bash bench/gpu_session.sh core       # bench: fp16, N 1k/4k/16k, d 64/128, no mask and causal
#   bash bench/gpu_session.sh sweep-d64  # launch-configuration sweep, head dim 64 (then sweep-d128)
#   bash bench/gpu_session.sh sweep-training  # the sweep's heavy training call (causal, padding, dropout)
#   bash bench/gpu_session.sh grid-fp16  # the rest of the grid, in parts: grid-fp16, grid-bf16, tour
#
# Logs and benchmark JSON go to $OUT (the device tool's output folder) or bench/results/incoming.
# Every step runs under a time limit that leaves the call time to return what it wrote: a limit
# interrupts pytest (SIGINT), which still writes the JSON of what finished. Commit the JSON under
# bench/results/ as <device>-<date>-<part>.json and summarise it (bench/results/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
part="${1:?usage: bash bench/gpu_session.sh tests|core|sweep-d64|sweep-d128|sweep-training|grid-fp16|grid-bf16|tour}"
budget="${2:-540}"  # seconds for this part's steps together
out="${OUT:-bench/results/incoming}"
mkdir -p "$out"
py="${PYTHON:-python3}"
start=$(date +%s)

left() { echo $(( budget - ($(date +%s) - start) )); }

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $out/NAME.log, print the tail
    local name="$1" limit="$2"; shift 2
    local remaining; remaining=$(left)
    (( limit > remaining )) && limit=$remaining
    if (( limit < 30 )); then echo "== $name: skipped, ${remaining}s left"; return; fi
    echo "== $name (limit ${limit}s): $*"
    timeout -s INT -k 30 "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? after $(( $(date +%s) - start ))s in this part"
    tail -n 15 "$out/$name.log"
}

"$py" -m pip install --no-deps --no-build-isolation -q -e . >"$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }
"$py" - <<'EOF' | tee "$out/machine.txt"
import torch, triton
p = torch.cuda.get_device_properties(0)
print(f"{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs; torch {torch.__version__}, "
      f"triton {triton.__version__}, cuda {torch.version.cuda}")
EOF
device=$("$py" -c "import torch; print(torch.cuda.get_device_name().lower().replace('nvidia ', '').replace(' ', '-'))")
stamp="$device-$(date -u +%Y-%m-%d)"
bench() {  # bench NAME SECONDS PYTEST-ARGS...
    local name="$1" limit="$2"; shift 2
    step "$name" "$limit" "$py" -m pytest bench --benchmark-only -q -p no:cacheprovider \
        --benchmark-json="$out/$stamp-$name.json" "$@"
}

case "$part" in
  tests)
    step gpu-tests 240 "$py" -m pytest tests -m gpu -q -n 8 -p no:cacheprovider
    step kernel-tests 400 "$py" -m pytest tests/test_forward.py tests/test_backward.py tests/test_modules.py \
        tests/test_huggingface.py -q -n 8 -p no:cacheprovider -x
    ;;
  core)
    bench core "$budget" bench/test_attention_bench.py --bench-seconds 0.1 \
        -k "grid and fp16 and (N1024- or N4096- or N16384-) and not padding"
    ;;
  sweep-d64 | sweep-d128)
    bench "$part" "$budget" bench/test_config_sweep.py --bench-seconds 0.1 -k "${part#sweep-}- and not dropout"
    ;;
  sweep-training)
    bench "$part" "$budget" bench/test_config_sweep.py --bench-seconds 0.1 -k "causal-padding-dropout"
    ;;
  grid-fp16 | grid-bf16)
    bench "$part" "$budget" bench/test_attention_bench.py --bench-seconds 0.1 \
        -k "grid and ${part#grid-} and not ((N1024- or N4096- or N16384-) and not padding and fp16)"
    ;;
  tour)
    bench tour "$budget" bench/test_attention_bench.py -k tour
    ;;
  *)
    echo "unknown part '$part'" >&2; exit 2
    ;;
esac
ls -l "$out"
