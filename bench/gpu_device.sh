#!/usr/bin/env bash
# On a lent GPU machine (the `device` tool), from the repository root: install the wheels `make gpu-kit` put in
# .whl/ (carried: the machine reaches no registry) into /tmp/site, then run `make bench-gpu` with the image's
# python3 (its CUDA torch). Everything it writes lands in $OUT (gpu-train.json, gpu-train.md, log.txt).
#   device tool: run(command="bash bench/gpu_device.sh", carry=[".whl"], timeout_s=570)
set -uo pipefail
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/: run \`make gpu-kit\` here and carry .whl"; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 2
  export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  python3 -c "import torch, transformers, peft, bitsandbytes; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)"
  python3 -m bench.gpu_train --out "$OUT" "$@"
} 2>&1 | tee "$OUT/log.txt"
