# syntax=docker/dockerfile:1.7
# Lagpilot worker runtime image: the base for an image that adds your handler package.
#   docker build -f docker/worker.Dockerfile -t <registry>/lagpilot-worker:0.1.0 .
# Then, in your project:
#   FROM <registry>/lagpilot-worker:0.1.0
#   COPY --chown=10001:10001 orders/ /app/orders/
#   CMD ["--handler=orders.handlers:handle", ...]
# Stage 1 builds wheels for lagpilot[worker] and every dependency; the final stage installs
# them from a bind mount, so neither the wheels nor any build tooling end up in the image.

# The base is a build argument: Docker users keep the official Python image; the local stack, which
# reaches no container registry, passes a Debian bookworm image with Debian's Python 3.11
# (BASE_IMAGE=localhost/lagpilot-bookworm-python:<tag>, built by hack/stack.py).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY contract/ contract/
COPY operator/ operator/
COPY worker/ worker/
# requirements.lock pins every dependency (the versions `make test` installs). A virtual environment
# works the same on both bases (Debian's own python3 refuses system-wide pip installs).
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels -c requirements.lock ".[worker]"

FROM ${BASE_IMAGE}
ARG LAGPILOT_VERSION=0.1.0
LABEL org.opencontainers.image.title="lagpilot-worker" \
      org.opencontainers.image.description="Lagpilot worker runtime: in-pod pool, at-least-once commits, retry tiers and DLQ" \
      org.opencontainers.image.version="${LAGPILOT_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lagpilot/bin:$PATH \
    PYTHONPATH=/app
# A fixed numeric uid/gid, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 lagpilot \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin lagpilot
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/lagpilot \
    && /opt/lagpilot/bin/pip install --no-cache-dir --no-index --find-links=/wheels "lagpilot[worker]==${LAGPILOT_VERSION}"
# Handler code goes here (on PYTHONPATH); the root filesystem stays read-only at run time.
WORKDIR /app
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["lagpilot-worker"]
CMD ["--help"]
