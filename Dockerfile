# kernelscope in a container: the FastAPI server and its numpy engine, data in /data.
#   docker build -t kernelscope .
#   docker run --rm -p 127.0.0.1:8000:8000 -v kernelscope-data:/data kernelscope
# Plain Dockerfile syntax (no BuildKit-only features), so the legacy builder works too.

# Stage 1: build the project's wheel and install it with its dependencies into a venv.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY app ./app
COPY templates ./templates
COPY static ./static
# dumb-init (PyPI) runs as PID 1: it reaps orphans, such as the engine's partner process of a
# run whose process the server had to kill, and passes signals to the server alone
# (--single-child), which then stops its runs gracefully as it does outside Docker.
# EXTRAS: optional extras of the wheel; deploy/compose.yaml builds with EXTRAS=distributed
# (PostgreSQL driver, Dramatiq and Redis for distributed mode). Empty: the embedded image.
ARG EXTRAS=""
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && for wheel in /wheels/kernelscope-*.whl; do \
      /opt/venv/bin/pip install "${wheel}${EXTRAS:+[$EXTRAS]}" "dumb-init==1.2.5.post1"; \
    done \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

# Stage 2: the runtime image: the venv only (without pip), no sources, compilers or test tools.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KERNELSCOPE_DATA=/data \
    KERNELSCOPE_HOST=0.0.0.0 \
    KERNELSCOPE_PORT=8000
RUN groupadd --system --gid 10001 kernelscope \
 && useradd --system --uid 10001 --gid kernelscope --home-dir /data --no-create-home --shell /usr/sbin/nologin kernelscope \
 && mkdir /data \
 && chown kernelscope:kernelscope /data
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('KERNELSCOPE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["dumb-init", "--single-child", "--"]
CMD ["kernelscope", "serve"]
