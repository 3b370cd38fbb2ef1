# Parley's container image: a builder stage compiles the wheels (llama-cpp-python builds llama.cpp
# from source, CPU only), a slim runtime stage holds only the virtualenv. See README "Deploying".
#
#   docker build -t parley .                                  # with the embedded extra (llama.cpp, faster-whisper, Kokoro)
#   docker build --build-arg PARLEY_EXTRAS= -t parley .       # remote engines only (no compiler run, smaller)
#   docker run -p 8000:8000 -e PARLEY_API_KEYS=sk-... -v parley-models:/models parley
#
# BASE_IMAGE must be a Debian-based image with Python 3.11+ and its venv module (python:3.11-slim;
# where Docker Hub cannot be reached, a local one made with deploy/make-base-image.sh).

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ARG PARLEY_EXTRAS=embedded
# The same llama.cpp build as scripts/bootstrap.sh: CPU only, no examples, tests or servers, and
# no -march=native (the image must run on any x86-64, not only on the machine that built it).
ARG CMAKE_ARGS="-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF"
ENV CMAKE_ARGS=${CMAKE_ARGS} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/parley \
 && /opt/parley/bin/pip install --upgrade pip "setuptools>=77" wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Wheels first (the compiled ones stay in this stage), then the install from those wheels only.
RUN /opt/parley/bin/pip wheel --wheel-dir /wheels ".${PARLEY_EXTRAS:+[${PARLEY_EXTRAS}]}" \
 && /opt/parley/bin/pip install --no-index --find-links /wheels ".${PARLEY_EXTRAS:+[${PARLEY_EXTRAS}]}" \
 && if /opt/parley/bin/pip show torch >/dev/null 2>&1; then echo "torch was pulled in" >&2; exit 1; fi \
 && /opt/parley/bin/python -c "import parley"

FROM ${BASE_IMAGE} AS runtime
# libgomp1: llama.cpp and CTranslate2 use OpenMP; the slim image does not have it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 parley \
 && useradd --system --uid 10001 --gid parley --home-dir /home/parley --create-home --shell /usr/sbin/nologin parley \
 && mkdir -p /models \
 && chown parley:parley /models
COPY --from=builder /opt/parley /opt/parley
# Models (GGUF files, CTranslate2 directories, Kokoro files) live in the /models volume; models
# fetched from the hub are cached there too (HF_HOME), so they survive a new container.
ENV PATH=/opt/parley/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models/huggingface \
    PARLEY_HOST=0.0.0.0 \
    PARLEY_PORT=8000
VOLUME ["/models"]
USER 10001:10001
WORKDIR /home/parley
# 8000: the public port. 8100+i: worker i's internal port (PARLEY_INTERNAL_PORT), for requests
# forwarded by other nodes; reachable between nodes, never through the load balancer.
EXPOSE 8000 8100
# Liveness only (the process answers); readiness (/readyz) is the load balancer's concern.
# Plain HTTP: with PARLEY_SSL_* set, override this check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PARLEY_PORT', '8000'), timeout=4)"]
# SIGTERM starts the drain: /readyz turns 503, new sessions are refused, live ones get
# PARLEY_SHUTDOWN_GRACE_S (30 s) before 1001. Give the container more than that to stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["parley", "serve"]
CMD []
