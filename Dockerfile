# mise-twilio: Twilio Media Streams ingest bridge.
# Python 3.13 on purpose: audioop left the stdlib there, so the image exercises audioop-lts.
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MISE_HOST=0.0.0.0 \
    MISE_PORT=8080 \
    MISE_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mise_twilio ./mise_twilio
COPY fixtures/fork_two_track.jsonl ./fixtures/fork_two_track.jsonl
# /app/mise-data: where `mise-twilio demo` writes (./mise-data) when run in the image.
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --create-home mise \
    && install -d -o mise /app/mise-data \
    && rm -rf /app/mise_twilio

USER mise
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os,urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"MISE_PORT\",\"8080\")}/healthz', timeout=2)" || exit 1
# uvicorn handles SIGTERM: open turns close as stream_end and the sinks drain before exit.
STOPSIGNAL SIGTERM
CMD ["mise-twilio", "serve"]
