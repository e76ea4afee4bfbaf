# The image of the api, worker and flower services (docker-compose.yml); the commands are the Procfile's.
# It holds the runtime lock (requirements.txt: no test tool) and Batchery installed as a package.

# Stage 1: Batchery built into a wheel, so that the image gets the package and not the source tree.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app app
COPY workers workers
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BATCHERY_APIS=/app/examples/cortex.yaml

WORKDIR /app
# Every package pinned, each checked against its hash: the same set on every build.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --require-hashes -r /tmp/requirements.txt && rm /tmp/requirements.txt

# Batchery itself, not editable and without dependencies (they are the locked ones above): the
# `batchery` CLI in every container (`docker compose exec api batchery get`).
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -r /tmp/wheels
# The example APIs the api service deploys at start (BATCHERY_APIS above; set it to your own).
COPY examples examples
# Not root (Celery warns about it); results/ exists in the image so the named volume mounted there
# starts out owned by this user.
RUN useradd --create-home --uid 1000 batchery && mkdir -p /app/results && chown batchery /app/results
USER batchery

EXPOSE 8080 5555
CMD ["sh", "-c", "exec gunicorn --workers ${WEB_CONCURRENCY:-2} --worker-class gthread --threads ${WEB_THREADS:-4} --bind ${BIND:-0.0.0.0}:${PORT:-8080} --access-logfile - 'app:create_app()'"]
