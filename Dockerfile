# Two images from one file (docker-compose.yml builds both):
#   --target runtime        the project image: `hps` CLI, Ray head/workers, CUDA-capable torch
#   --target mlflow-server  a small MLflow tracking server image (no torch, no ray), also used by
#                           the one-shot mlflow-init service
#
# Base choice: python:3.11-slim + the official torch wheel instead of a pytorch/pytorch base.
# The torch CUDA wheels bundle the CUDA runtime libraries they need (cuDNN, cuBLAS, NCCL come
# as pip packages), so a GPU host only needs the NVIDIA driver and the NVIDIA container
# toolkit; the image pins the same Python (3.11) and torch (2.13.0) as the development
# environment, which a pytorch/pytorch image (conda Python, its own torch build) would not.
#
# Reproducible inputs: the base image is pinned by tag AND multi-arch index digest (the tag says
# what it is, the digest decides the bytes), and every package a `pip install` names is pinned
# with ==. To refresh the base: `docker buildx imagetools inspect python:3.11-slim-trixie`
# (or docker-library/repo-info, repos/python/remote/3.11-slim-trixie.md) and update both parts.
# No `# syntax=` line: that would pull a dockerfile frontend image by tag; the builder's built-in
# frontend handles everything used here.
#
# Build args:
#   PYTHON_IMAGE     python:3.11.15-slim-trixie@sha256:90744cff... (below)
#   TORCH_INDEX_URL  https://download.pytorch.org/whl/cu128 (default, CUDA 12.8 wheels);
#                    https://download.pytorch.org/whl/cpu for a smaller CPU-only image;
#                    https://pypi.org/simple for PyPI's default Linux wheel (also CUDA-enabled).
#   TORCH_VERSION    2.13.0

# python:3.11-slim-trixie as published 2026-08-05 (Python 3.11.15, Debian 13), index digest from
# docker-library/repo-info (repos/python/remote/3.11-slim-trixie.md).
ARG PYTHON_IMAGE=python:3.11.15-slim-trixie@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS mlflow-server

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# mlflow[auth] + Flask-WTF (what the auth extra asks for, pinned): the basic-auth app;
# psycopg2-binary: PostgreSQL backend store. No boto3: artifacts live on a local volume.
RUN pip install "mlflow[auth]==3.17.2" "Flask-WTF==1.3.0" "psycopg2-binary==2.9.13"

# hps-check-secrets (refuses placeholder/short secrets), the server entrypoint (PostgreSQL URI via
# the environment, never on the command line) and the one-shot user setup of mlflow-init.
COPY docker/check-secrets.sh /usr/local/bin/hps-check-secrets
COPY docker/mlflow-server.sh /usr/local/bin/hps-mlflow-server
COPY docker/mlflow-init.py /usr/local/bin/hps-mlflow-init
RUN chmod 0755 /usr/local/bin/hps-check-secrets /usr/local/bin/hps-mlflow-server /usr/local/bin/hps-mlflow-init

# Non-root user. /mlartifacts is the artifact volume: a fresh named volume takes the owner of the
# mount point in the image, so the server can write there.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--help"]

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

# 1. torch first, from the CUDA index (largest layer, changes least often).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# 2. The project's runtime dependencies, each pinned, as their own layer so that a code change does
#    not reinstall them. ray[default] adds the dashboard and the Jobs API to ray[tune]. Keep these
#    pins in step with pyproject.toml (tests/test_compose.py checks that every dependency there is
#    pinned here); the server image above uses the same MLflow version as the clients.
RUN pip install "ray[default,tune]==2.60.0" "optuna==5.0.0" "mlflow==3.17.2" \
        "pandas==3.1.1" "scikit-learn==1.9.1" "pyarrow==25.0.1" "pydantic==2.14.3" "pyyaml==6.0.3" \
        "matplotlib==3.11.2" "requests==2.34.2"

# 3. The project itself (see .dockerignore for what is left out of the build context). --no-deps:
#    everything it needs is in the pinned layer above; --no-build-isolation: build with the base
#    image's setuptools (pinned there) instead of downloading the newest one. So this step cannot
#    pull in anything unpinned.
WORKDIR /app
COPY . /app
RUN pip install --no-deps --no-build-isolation /app

# hps-check-secrets: the entrypoint wrapper of ray-head, ray-worker and hps.
COPY docker/check-secrets.sh /usr/local/bin/hps-check-secrets
RUN chmod 0755 /usr/local/bin/hps-check-secrets

# Non-root user. /shared is the checkpoint volume: a fresh named volume takes the owner of the
# mount point in the image, so the user can write there. /app itself becomes writable for
# relative output paths; the installed sources stay root-owned.
RUN useradd --create-home --uid 1000 --shell /bin/bash hps \
    && mkdir -p /shared \
    && chown hps:hps /shared /app
USER hps

# 6379 Ray GCS, 8265 Ray dashboard / Jobs API, 10001 Ray client.
EXPOSE 6379 8265 10001
CMD ["hps", "--help"]
