# The sidecar: exporter, control API and weight shuffles (CUDA torch: CUDA IPC and NCCL).
# Build from the repository root:
#   docker build -f docker/sidecar.Dockerfile -t eplb-sidecar .
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
# Only what the sidecar runs: the shared core and the sidecar (setuptools finds the packages
# of the directories present; the operator's code stays out too).
COPY core/ core/
COPY sidecar/ sidecar/
# PyPI's torch wheels carry the CUDA runtime and NCCL; the node supplies the driver.  The
# `sidecar` extra only: no kopf, placement engine or Kubernetes client.
RUN python -m venv /opt/eplb \
 && /opt/eplb/bin/pip install "torch==2.13.0" \
 && /opt/eplb/bin/pip install ".[sidecar]"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/eplb /opt/eplb
ENV PATH=/opt/eplb/bin:$PATH PYTHONUNBUFFERED=1
# A named user: kopf and torch look the running user up (getpass, ~), and fail without one.
RUN groupadd --system --gid 65532 eplb \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /tmp eplb
USER 65532:65532
EXPOSE 8470 9470 29470
ENTRYPOINT ["eplb-sidecar"]
CMD ["serve", "--table-dir=/dev/shm/eplb", "--auth=kubernetes"]
