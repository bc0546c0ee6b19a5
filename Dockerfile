# syntax=docker/dockerfile:1
#
# flare-seg GPU image: the HTTP server by default, the batch predictor with ./predict.sh.
#
#   docker build -t flare-seg .
#   docker run --gpus all -p 8000:8000 --stop-timeout 60 flare-seg
#   docker run --gpus all --rm --no-healthcheck \
#       -v "$PWD/inputs:/workspace/inputs:ro" -v "$PWD/outputs:/workspace/outputs" \
#       --user "$(id -u):$(id -g)" flare-seg ./predict.sh
#
# See docs/server.md. TensorFlow, CUDA and cuDNN come with the base image (Python 3.11).
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    KERAS_HOME=/tmp/.keras \
    FLARE_SEG_WORK_DIR=/var/lib/flare-seg

# An unprivileged user; the code and the models stay owned by root (read-only for it).
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" flare \
    && useradd --system --uid "${APP_UID}" --gid flare --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin flare \
    && install -d -o flare -g flare /workspace/inputs /workspace/outputs /var/lib/flare-seg

WORKDIR /app

# Dependencies first, from pyproject.toml, so that code or model changes reuse this layer.
# TensorFlow is already installed by the base image and satisfies the requirement.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package carries the shipped models and the example CT (package data), as any install does.
COPY README.md ./
COPY flare_seg ./flare_seg
RUN python -m pip install --no-cache-dir --no-deps . \
    && rm -rf /app/flare_seg /app/build /app/flare_seg.egg-info \
    && flare-seg --help > /dev/null

COPY --chmod=0755 predict.sh ./predict.sh

USER ${APP_UID}:${APP_UID}
EXPOSE 8000
STOPSIGNAL SIGTERM
# Liveness only (200 while the process runs); readiness is GET /ready (models loaded).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["flare-seg", "serve", "--host", "0.0.0.0", "--port", "8000"]
