#!/usr/bin/env bash
# Run HERE (a machine that can reach the package index), before bench/gpu_check.sh is carried to a GPU machine
# that cannot download: fetches, as wheels for that machine's Python (3.12, x86-64 manylinux), the pure-Python
# packages the project needs that a bare torch image lacks, into bench/gpu/wheels/ (ignored by git through the
# .gitignore written inside it; name it in the device run's `carry`). Versions are the ones installed here, so
# the GPU run executes what the tests here ran. The image's own torch, transformers, accelerate, peft, pandas,
# pyarrow, numpy, scipy, sympy stay as they are (KINDS.md lists them). lm-eval is not carried: only the Monkeys
# greedy baseline imports it, and the check turns that off.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WHEELS="$HERE/wheels"
PY_VERSION="${PY_VERSION:-3.12}"
PACKAGES=(hydra-core omegaconf antlr4-python3-runtime math-verify latex2sympy2_extended trl datasets dill multiprocess gguf)

rm -rf "$WHEELS" && mkdir -p "$WHEELS"
printf '*\n' > "$WHEELS/.gitignore"
for name in "${PACKAGES[@]}"; do
  version="$(python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"
  if ! python -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d "$WHEELS" "$name==$version" 2>/dev/null; then
    # sdist only (antlr4-python3-runtime 4.9.3): build it here; a pure-Python wheel installs on any Python 3
    python -m pip wheel -q --no-deps -w "$WHEELS" "$name==$version"
  fi
done
count=$(ls "$WHEELS"/*.whl | wc -l)
if [ "$count" -ne "${#PACKAGES[@]}" ]; then
  echo "expected ${#PACKAGES[@]} wheels, got $count in $WHEELS" >&2; exit 1
fi
if ls "$WHEELS"/*.whl | grep -v -E -- '-(py3|py2\.py3|py312|cp312)-[^-]+-(any|manylinux[^/]*x86_64)\.whl$'; then
  echo "the wheels above would not install on CPython $PY_VERSION x86-64" >&2; exit 1
fi
du -sh "$WHEELS"
ls "$WHEELS"
