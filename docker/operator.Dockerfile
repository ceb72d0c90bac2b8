# syntax=docker/dockerfile:1.7
# Lagpilot operator image. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t <registry>/lagpilot-operator:0.1.0 .
# Stage 1 builds the dependencies' wheels and installs them into the runtime's virtual environment;
# stage 2 builds lagpilot's own wheel; the final stage copies the environment and installs that wheel
# into it, so no build tooling ends up in the image (the project's wheel stays in /opt/lagpilot-build,
# a few hundred KB).

# The base is a build argument: Docker users keep the official Python image; the local stack, which
# reaches no container registry, passes a Debian bookworm image with Debian's Python 3.11
# (BASE_IMAGE=localhost/lagpilot-bookworm-python:<tag>, built by hack/stack.py).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# Stage 1: the dependencies' wheels. Only what decides them goes in (pyproject.toml and the lock; the
# package folders are empty here), so with a layer cache (Docker, or buildah --layers as the local stack
# builds) a change of the code reuses this stage and the installed dependencies below.
FROM ${BASE_IMAGE} AS dependencies
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
# requirements.lock pins every dependency (the versions `make test` installs). A virtual environment
# works the same on both bases (Debian's own python3 refuses system-wide pip installs). The build
# backend (pyproject's build-system requires) goes into it too, for the project's wheel below. The
# runtime's virtual environment (/opt/lagpilot) gets the dependencies here; the final stage copies it.
RUN mkdir -p contract operator worker \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels -c requirements.lock ".[operator]" \
    && rm /wheels/lagpilot-*.whl \
    && python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')" \
       > /tmp/build-requires.txt \
    && /opt/build/bin/pip install --no-cache-dir -r /tmp/build-requires.txt \
    && python3 -m venv /opt/lagpilot \
    && /opt/lagpilot/bin/pip install --no-cache-dir --no-index /wheels/*.whl

# Stage 2: the project's own wheel, without its dependencies: the operator's packages only (the worker's
# folder stays empty; `lagpilot-worker` is the worker image's command and does not run in this one).
FROM dependencies AS builder
COPY contract/ contract/
COPY operator/ operator/
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /project .

FROM ${BASE_IMAGE}
ARG LAGPILOT_VERSION=0.1.0
LABEL org.opencontainers.image.title="lagpilot-operator" \
      org.opencontainers.image.description="Lagpilot: Kafka consumer autoscaler for Kubernetes (kopf operator)" \
      org.opencontainers.image.version="${LAGPILOT_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lagpilot/bin:$PATH
# A fixed numeric uid/gid, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 lagpilot \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin lagpilot
# The dependencies' virtual environment (the same base, so the same interpreter path), then the
# project's wheel into it. COPY --from, not RUN --mount=type=bind,from=...: buildah --layers does not
# mount a stage it took from the cache ("couldn't find .../wheels on host to bind mount").
COPY --from=dependencies /opt/lagpilot/ /opt/lagpilot/
COPY --from=builder /project/ /opt/lagpilot-build/
RUN /opt/lagpilot/bin/pip install --no-cache-dir --no-index --no-deps --find-links=/opt/lagpilot-build \
        "lagpilot[operator]==${LAGPILOT_VERSION}" \
    && /opt/lagpilot/bin/pip check
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080 8081
# dumb-init is PID 1 and passes signals on (docker/worker.Dockerfile says why). The Helm chart replaces
# the command after it with peering and namespace options (charts/lagpilot).
ENTRYPOINT ["dumb-init", "--"]
CMD ["kopf", "run", "--module=lagpilot_operator.handlers", "--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"]
