#!/usr/bin/env bash
# The GPU check on a lent device machine, from the wheels gpu_kit.py packed under .gpu_carry/
# (carried folders: core, dali1, dali2, ...; see benchmarks/results/gpu/README.md).
#
#   bash benchmarks/gpu_loan.sh          install core (once), keep the carried DALI parts, unpack
#                                        DALI once all are there, then run the GPU check
#   bash benchmarks/gpu_loan.sh stash    only keep the carried DALI parts (chained calls), and
#                                        install core if it is carried and not yet installed
#
# The check's --dali: off while DALI is not importable, only (--merge the first half's JSON) once
# the Kornia half ran on this machine (its gpu_check.json kept as $MARK), else auto;
# GPU_CHECK_DALI overrides. --budget: GPU_CHECK_BUDGET, else
# 270 s (off), 220 s (only), 480 s (auto). GPU_CHECK_ARGS is appended (e.g. "--device cpu --dry").
# Output stays short: the check's whole log is $OUT/loan.log, its tail is printed.
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
CARRY=${GPU_CARRY:-.gpu_carry}
SITE=${GPU_SITE:-/tmp/site}
PARTS=${GPU_PARTS:-/tmp/dali_parts}
MARK=${GPU_MARK:-/tmp/streamaug_kornia_half.json}
OUT=${OUT:-/tmp/gpu_loan_out}
mkdir -p "$OUT"
say() { echo "loan ${SECONDS}s: $*"; }

if ls "$CARRY"/dali*/ >/dev/null 2>&1 || [ -d "$PARTS" ]; then
    $PY benchmarks/gpu_kit.py stash "$CARRY" "$PARTS"
fi

# core: installed once, by whichever call carries it (a stash call too)
if [ ! -e "$SITE/.core-installed" ]; then
    if ! ls "$CARRY"/core/*.whl >/dev/null 2>&1; then
        [ "${1:-}" = stash ] && exit 0
        say "no core wheels here and none installed in $SITE: carry .gpu_carry/core"; exit 2
    fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$CARRY"/core/*.whl \
        || { say "core install failed"; exit 2; }
    # a floor wheel (typing-extensions for pydantic) only where the image's is older
    floor=$($PY - "$CARRY"/core/floor/*.whl <<'EOF'
import sys, importlib.metadata as m
from packaging.version import Version
for w in sys.argv[1:]:
    name, version = w.rsplit("/", 1)[-1].split("-")[:2]
    try:
        have = m.version(name)
    except m.PackageNotFoundError:
        have = "0"
    if Version(have) < Version(version):
        print(w)
EOF
)
    if [ -n "$floor" ]; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" --upgrade $floor \
            || { say "floor install failed"; exit 2; }
    fi
    touch "$SITE/.core-installed"
    say "core installed in $SITE${floor:+ (and $(basename $floor))}"
fi
[ "${1:-}" = stash ] && exit 0
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
$PY benchmarks/gpu_kit.py link . "$SITE" || exit 2

if [ -d "$PARTS" ]; then
    $PY benchmarks/gpu_kit.py assemble "$PARTS" "$SITE"      # rc 3: parts still to come
fi
# nvJPEG from the kit, CUDA's other libraries from the image (DALI dlopens them by name)
image_cu=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13/lib
for d in "$SITE/nvidia/cu13/lib" "$image_cu"; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}

$PY - <<'EOF'      # one line of what imports; exit 0 where nvidia.dali does
import importlib, sys
shown, dali = [], False
try:
    import torch
    shown.append(f"torch {torch.__version__} cuda={torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
except Exception as e:
    shown.append(f"torch: {type(e).__name__}: {str(e)[:80]}")
for name in ("streamaug.loader", "kornia", "webdataset", "imblearn", "albumentations", "nvidia.dali"):
    try:
        shown.append(f"{name} {getattr(importlib.import_module(name), '__version__', 'ok')}")
        dali = dali or name == "nvidia.dali"
    except Exception as e:
        shown.append(f"{name}: {type(e).__name__}: {str(e)[:80]}")
print("have: " + " | ".join(shown))
sys.exit(0 if dali else 1)
EOF
if [ $? = 0 ]; then
    if [ -e "$MARK" ]; then mode=only; else mode=auto; fi
else
    mode=off
fi
mode=${GPU_CHECK_DALI:-$mode}
case $mode in off) budget=270 ;; only) budget=220 ;; *) budget=480 ;; esac
budget=${GPU_CHECK_BUDGET:-$budget}
merge=()
[ "$mode" = only ] && [ -s "$MARK" ] && merge=(--merge "$MARK")
say "gpu_check --dali $mode --budget $budget ${merge[*]} ${GPU_CHECK_ARGS:-}"
PYTHONUNBUFFERED=1 $PY -m streamaug.benchmarks.gpu_check --out "$OUT/gpu" --budget "$budget" --dali "$mode" \
    "${merge[@]}" ${GPU_CHECK_ARGS:-} >"$OUT/loan.log" 2>&1
rc=$?
[ "$mode" = off ] && [ -s "$OUT/gpu/gpu_check.json" ] && cp "$OUT/gpu/gpu_check.json" "$MARK"
tail -c 7000 "$OUT/loan.log"
say "gpu_check exit $rc (whole log: \$OUT/loan.log)"
exit $rc
