# syntax=docker/dockerfile:1
# One image for every Squall role: each Deployment picks it by command
# (squall gateway | processor | scheduler | migrate).
#
# The base: python:3.11 slim (Debian bookworm), pinned by tag and by digest, so a rebuild gets the same
# base. The recipe asks of its base only python3 (3.11, with its venv module), libstdc++ and useradd: CI
# builds this same file on a minimal Debian root file system made on the build machine
# (`python3 tasks.py image`, see docs/deploy.md). The base.name label names whichever base was used.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# --- wheels: the files named in requirements/*.lock, each checked against its hash there ---
FROM ${PYTHON_IMAGE} AS wheels
# download (default): from the package index, during the build. context: only from requirements/wheels/ in
# the build context, filled beforehand (`python3 tasks.py image` does): the build then needs no network.
ARG WHEELS=download
WORKDIR /src
COPY requirements/ ./requirements/
# pip from the venv module, which every base the recipe supports has (a base may have no pip of its own).
RUN case "$WHEELS" in \
      download) ;; \
      context) export PIP_NO_INDEX=1 ;; \
      *) echo "WHEELS is download or context, not $WHEELS" >&2; exit 1 ;; \
    esac \
    && python3 -m venv /opt/download \
    && /opt/download/bin/pip download --no-cache-dir --disable-pip-version-check --require-hashes --no-deps \
       --only-binary=:all: --find-links requirements/wheels --dest /wheels \
       -r requirements/image.lock -r requirements/build.lock

# --- build: Squall's wheel and the virtual environment the image runs; no network from here on ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INDEX=1 \
    PIP_FIND_LINKS=/wheels \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY --from=wheels /wheels /wheels
COPY requirements/*.lock ./requirements/
COPY pyproject.toml README.md ./
COPY core ./core
COPY services ./services
# Hatchling (build.lock) builds Squall's wheel in a throwaway environment. /opt/squall gets the runtime
# dependencies (image.lock: pyproject.toml's dependencies and the extras a deployment can switch on), then
# Squall; it has no pip of its own. The test suites some packages ship are never imported: not kept.
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes -r requirements/build.lock \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /dist . \
    && python3 -m venv --without-pip /opt/squall \
    && /opt/build/bin/pip --python /opt/squall/bin/python install --no-cache-dir --require-hashes \
       -r requirements/image.lock \
    && /opt/build/bin/pip --python /opt/squall/bin/python install --no-cache-dir --no-deps /dist/squall-*.whl \
    && find /opt/squall/lib -depth -type d \( -name tests -o -name test \) -path "*/site-packages/*" \
       -exec rm -rf {} +

# --- runtime: the virtual environment on the base; no compiler, no pip, no caches, no sources ---
FROM ${PYTHON_IMAGE} AS runtime
# The labels' values (LABEL, at the end). Declared before the first RUN, they are part of its cache key: a
# new version, revision or date rebuilds the layers below, so no build reuses an older build's labels.
ARG PYTHON_IMAGE
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ENV PATH=/opt/squall/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SQUALL_LOG_FORMAT=json
RUN groupadd --system --gid 10001 squall \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin squall
COPY --from=build /opt/squall /opt/squall
USER 10001:10001
WORKDIR /tmp
# gateway HTTP API, processor and scheduler metrics/health.
EXPOSE 8888 9101 9102
# The services turn SIGTERM into a graceful drain (see docs/reliability.md).
STOPSIGNAL SIGTERM
ENTRYPOINT ["squall"]
CMD ["gateway"]
LABEL org.opencontainers.image.title="squall" \
      org.opencontainers.image.description="Squall task-processing platform: gateway, processor, scheduler and migrations in one image" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
