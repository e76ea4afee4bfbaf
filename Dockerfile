# The image of the api, worker and flower services (docker-compose.yml); the commands are the Procfile's.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# the project itself, editable and without dependencies (the pinned ones above), as `make install`
# does: the `batchery` CLI in every container (`docker compose exec api batchery get`)
RUN pip install --no-deps -e .
# Not root (Celery warns about it); results/ exists in the image so the named volume mounted there
# starts out owned by this user.
RUN useradd --create-home --uid 1000 batchery && mkdir -p /app/results && chown batchery /app/results
USER batchery

EXPOSE 8080 5555
CMD ["sh", "-c", "exec gunicorn --workers ${WEB_CONCURRENCY:-2} --worker-class gthread --threads ${WEB_THREADS:-4} --bind 0.0.0.0:${PORT:-8080} --access-logfile - 'app:create_app()'"]
