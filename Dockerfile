# The genrec service image: CPU torch, the genrec core and the service (no training code).
# Build: docker build -t genrec-service .
# Run:   docker run -p 8000:8000 -e API_TOKEN=$(openssl rand -hex 32) -v "$PWD/bundles/tiny:/bundle:ro" genrec-service
#        (the service refuses to start without a write token; see docs/configuration.md, "Security")
#        (no REDIS_URL: an embedded Redis keeps its data under /data; see docker-compose.yml
#        for Redis as its own service and two replicas)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# CPU-only torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY genrec ./genrec
COPY service ./service
RUN pip install . && python -c "import service.app, genrec.bundle"

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin genrec \
    && mkdir -p /bundle /data \
    && chown genrec:genrec /data
USER genrec

# The bundle is mounted here (read-only is fine); /data holds the embedded Redis, if used.
ENV GENREC_BUNDLE=/bundle \
    GENREC_DATA_DIR=/data/redis
VOLUME ["/bundle", "/data"]

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]

CMD ["genrec-serve", "--host", "0.0.0.0", "--port", "8000"]
