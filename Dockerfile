# One image for web, migrations and Celery workers.
#
#   docker build -t imagesearch:cpu .
#   docker build -t imagesearch:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# The CUDA build needs no CUDA base image: the PyTorch wheels bring the CUDA runtime as pip
# packages, and the host's NVIDIA driver comes in through the NVIDIA Container Toolkit.
FROM python:3.11-slim-bookworm

# Which PyTorch build to install: /whl/cpu (small) or a CUDA index such as /whl/cu128.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# OMP_NUM_THREADS=1: one inference thread per process; several busy threads on a shared box
# ran 10-30x slower. Raise it for a CPU worker that has cores to itself.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    DATA_DIR=/data \
    MEDIA_ROOT=/data/media \
    HF_HOME=/models/hf-cache \
    DJANGO_SETTINGS_MODULE=config.settings.production \
    WEB_WORKERS=2

WORKDIR /app

# torch first, from the chosen index: requirements.txt pins torch==2.13.0 too, and a torch
# already installed from the PyTorch index (2.13.0+cpu or +cu128) satisfies that pin, so the
# second call does not swap in PyPI's build.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY requirements.txt .
RUN pip install -r requirements.txt

# The code stays root-owned (read-only to the app); only data and model cache are writable.
# Named volumes mounted on /data/media and /models start out with this ownership.
RUN useradd --create-home --uid 1000 --user-group app \
    && mkdir -p /data/media /models/hf-cache \
    && chown -R app:app /data /models
COPY . .

# Static files are baked into the image (WhiteNoise serves them). The key is thrown away and
# the URLs are never connected to: production settings refuse to start without them.
RUN SECRET_KEY=collectstatic-build-only \
    DATABASE_URL=postgresql://x@localhost/x \
    CELERY_BROKER_URL=redis://localhost:6379/0 \
    python manage.py collectstatic --noinput --verbosity 0

USER app
EXPOSE 8000

# The same gunicorn settings as compose and ./run (workers, threads, timeouts, worker recycling
# and the model warm-up), all from environment variables: WEB_WORKERS, WEB_MAX_REQUESTS, ...
CMD ["gunicorn", "config.wsgi", "--config=config/gunicorn.py", "--bind=0.0.0.0:8000"]
