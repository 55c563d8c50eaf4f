# adapterd image. Default: the GPU profile (CUDA torch and CUDA vLLM from PyPI, whose wheels
# bring the CUDA runtime; the host provides the driver through the NVIDIA container toolkit).
#   docker build -t adapterd .
#   docker build --build-arg PROFILE=cpu \
#     --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu -t adapterd:cpu .
# Python 3.11 on Linux x86_64: the platform constraints/gpu.txt is resolved and tested for.
FROM python:3.11.14-slim-bookworm

ARG PROFILE=gpu
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    ADAPTERD_HOST=0.0.0.0 \
    ADAPTERD_DATA_DIR=/data \
    ADAPTERD_MODEL_CACHE_DIR=/models

RUN useradd --create-home --uid 10001 adapterd \
    && mkdir -p /data /models \
    && chown adapterd /data

WORKDIR /opt/adapterd
COPY pyproject.toml README.md ./
COPY constraints/ constraints/
COPY scripts/ scripts/
COPY protos/ protos/
COPY adapterd/ adapterd/
COPY service/ service/
COPY trainer/ trainer/
COPY eval/ eval/

# The same setup script as `make setup PROFILE=...`; then the default model is converted once
# into the image, so a pod needs no network and no first-start conversion.
RUN PYTHON=python scripts/setup.sh --profile "${PROFILE}" \
    && adapterd prepare-model \
    && chmod -R a+rX /models

USER 10001
VOLUME ["/data"]
EXPOSE 50051 9400 8000
ENTRYPOINT ["adapterd"]
CMD ["serve"]
