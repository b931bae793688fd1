# The operator: kopf + the placement engine (CPU torch).  Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t eplb-operator .
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core/ core/
COPY operator/ operator/
COPY sidecar/ sidecar/
# CPU-only torch: the operator plans placements, it never touches a GPU.  The `operator`
# extra only: no CLI, plotting or local tooling (pyproject.toml says what each extra holds).
RUN python -m venv /opt/eplb \
 && /opt/eplb/bin/pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && /opt/eplb/bin/pip install ".[operator]"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/eplb /opt/eplb
ENV PATH=/opt/eplb/bin:$PATH PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba
# A named user: kopf and torch look the running user up (getpass, ~), and fail without one.
RUN groupadd --system --gid 65532 eplb \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /tmp eplb
USER 65532:65532
EXPOSE 8080 8081
# kopf inside, run only while this replica holds the leader-election Lease (the chart
# passes --lease; without it, one replica only).
ENTRYPOINT ["python", "-m", "eplb_operator.controller.run"]
CMD ["--all-namespaces"]
