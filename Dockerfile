# One image for the web app, the workers, the producer and Flower (docker-compose.yml).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
# CUDA build of PyTorch from PyPI; the web container runs it on the CPU.
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY clipdex clipdex
COPY indexer indexer
COPY webapp webapp
COPY migrations migrations
RUN pip install . flower
RUN useradd --create-home clipdex
USER clipdex
