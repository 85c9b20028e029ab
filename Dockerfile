# syntax=docker/dockerfile:1
# One image for every Squall role: each Deployment picks it by command
# (squall gateway | processor | scheduler | migrate).
#
# python:3.11 slim (Debian bookworm), pinned by tag and by digest: a rebuild gets the same base.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# --- build: Squall's wheel and the wheels of its dependencies (within pyproject.toml's pinned ranges) ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# Optional extras, e.g. --build-arg EXTRAS=otel for the OpenTelemetry export (SQUALL_OTEL__ENABLED).
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY services ./services
RUN python -m pip wheel --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

# --- runtime: the wheels installed into a virtual environment; no compiler, no pip cache, no sources ---
FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS=""
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="squall" \
      org.opencontainers.image.description="Squall task-processing platform: gateway, processor, scheduler and migrations in one image" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="python:3.11.13-slim-bookworm"
ENV PATH=/opt/squall/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SQUALL_LOG_FORMAT=json
RUN groupadd --system --gid 10001 squall \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin squall
# The wheels come in through a bind mount, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/squall \
    && /opt/squall/bin/pip install --no-cache-dir --no-index --find-links=/wheels "squall${EXTRAS:+[$EXTRAS]}" \
    && /opt/squall/bin/pip uninstall --yes pip
USER 10001:10001
WORKDIR /tmp
# gateway HTTP API, processor and scheduler metrics/health.
EXPOSE 8888 9101 9102
# The services turn SIGTERM into a graceful drain (see docs/reliability.md).
STOPSIGNAL SIGTERM
ENTRYPOINT ["squall"]
CMD ["gateway"]
