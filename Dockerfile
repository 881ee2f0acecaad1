# ChatAPI server image.
#   docker build -t chatapi .
#   docker run -p 8080:8080 -v chatapi-data:/data chatapi
# Settings come from CHATAPI_* environment variables (see chatapi/config.py).
# Without CHATAPI_SECRET the server generates a token secret once and keeps it
# in the database, so it survives restarts as long as /data does.

# --- build stage: turn the source tree into a wheel ------------------------------
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# .dockerignore keeps .git, virtualenvs, caches, databases and tests out of this copy.
# chatapi/schema.sql is a symlink to ../schema.sql: both arrive here, and building
# the wheel copies the file itself into the package.
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime stage ----------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Install the wheel (not editable) with its dependencies from the package index.
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && groupadd --gid 10001 chatapi \
    && useradd --uid 10001 --gid chatapi --no-log-init \
        --home-dir /data --no-create-home --shell /usr/sbin/nologin chatapi \
    && mkdir -p /data \
    && chown chatapi:chatapi /data

ENV CHATAPI_HOST=0.0.0.0 \
    CHATAPI_PORT=8080 \
    CHATAPI_DB=/data/chatapi.db

# The database (and its -wal/-shm files) lives here; mount a volume to keep it.
VOLUME /data
WORKDIR /data
USER 10001:10001

EXPOSE 8080

# No curl in the slim image: ask /health with the standard library (proxies ignored).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/health' % os.environ.get('CHATAPI_PORT', '8080'), timeout=4)"]

CMD ["chatapi"]
