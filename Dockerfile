# syntax=docker/dockerfile:1
#
# Two images from one file (docker-compose.yml builds both):
#   --target runtime        the project image: `hps` CLI, Ray head/workers, CUDA-capable torch
#   --target mlflow-server  a small MLflow tracking server image (no torch, no ray)
#
# Base choice: python:3.11-slim + the official torch wheel instead of a pytorch/pytorch base.
# The torch CUDA wheels bundle the CUDA runtime libraries they need (cuDNN, cuBLAS, NCCL come
# as pip packages), so a GPU host only needs the NVIDIA driver and the NVIDIA container
# toolkit; the image pins the same Python (3.11) and torch (2.13.0) as the development
# environment, which a pytorch/pytorch image (conda Python, its own torch build) would not.
#
# Build args:
#   TORCH_INDEX_URL  https://download.pytorch.org/whl/cu128 (default, CUDA 12.8 wheels);
#                    https://download.pytorch.org/whl/cpu for a smaller CPU-only image;
#                    https://pypi.org/simple for PyPI's default Linux wheel (also CUDA-enabled).
#   TORCH_VERSION    2.13.0

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS mlflow-server

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# mlflow[auth]: Flask-WTF for the basic-auth app; psycopg2: PostgreSQL backend store;
# boto3: S3 (MinIO) artifact store behind --serve-artifacts.
RUN pip install "mlflow[auth]==3.17.2" psycopg2-binary boto3

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin mlflow
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--help"]

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

# 1. torch first, from the CUDA index (largest layer, changes least often).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# 2. The project's runtime dependencies as their own layer so that a code change does not
#    reinstall them (`pip install .` below finds them already satisfied). ray[default] adds the
#    dashboard and the Jobs API to ray[tune]; psycopg2-binary and boto3 let the same image talk
#    to PostgreSQL and S3/MinIO. Keep these pins in step with pyproject.toml (the server
#    image above uses the same MLflow version as the clients).
RUN pip install "ray[default,tune]==2.60.0" "optuna==5.0.0" "mlflow==3.17.2" \
        "pandas==3.1.1" "scikit-learn==1.9.1" "pydantic==2.14.3" "pyyaml==6.0.3" \
        "matplotlib==3.11.2" "requests>=2.32" psycopg2-binary boto3

# 3. The project itself (see .dockerignore for what is left out of the build context).
WORKDIR /app
COPY . /app
RUN pip install /app

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
