# grand-challenge inference image, MIDOG 2025 Track 2: `python inference.py` reads /input, writes
# /output (see README.md, "Container"; ./build.sh builds it, ./test.sh runs it as grand-challenge does).
#
# Base: pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime. Torch 2.14.1+cu130 is the torch of
# requirements-dev.txt, and CUDA 13 + cuDNN 9 is the runtime onnxruntime-gpu 1.31 needs. Evidence
# that the tag is real (public repositories, searched 2026): a bug report tabulates the stock
# Docker Hub image with torch 2.14.1+cu130, cuBLAS 13.1.1.3 and cuDNN 9.24.0.43 (the versions of
# our local environment), and several Dockerfiles build FROM it, noting its Ubuntu 24.04 system
# Python 3.12 that needs PIP_BREAK_SYSTEM_PACKAGES=1 (PEP 668). CUDA 13 needs NVIDIA driver >= 580
# and compute capability >= 7.5 (the T4 is 7.5). Pin its digest (@sha256:...) once pulled.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM --platform=linux/amd64 ${BASE_IMAGE}

# No network at run time: nothing may reach for the Hugging Face hub. No .pyc written at run time
# (the sources are compiled below, as root).
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system user \
    && useradd --system --gid user --no-log-init --create-home --home-dir /home/user user

WORKDIR /opt/app

# Requirements before code, so a code change reuses this layer. The base's torch and torchvision
# are held fixed by a constraint: a requirement that wanted another torch fails here instead of
# silently replacing the CUDA build.
COPY requirements.txt ./
RUN python -m pip list --format=freeze | grep -iE '^(torch|torchvision)==' > /tmp/base-torch.txt \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install --no-cache-dir \
        --constraint /tmp/base-torch.txt --requirement requirements.txt \
    && rm /tmp/base-torch.txt

# Weights baked in (model/manifest.json + folds): the organisers re-ran containers without the
# /opt/ml/model mount, which stays an override (amf.predict.default_model_dir).
COPY model/ model/
COPY amf/ amf/
COPY inference.py ./
RUN python -m compileall -q amf inference.py

# Last, so that the base's name (a build argument) does not invalidate the layers above.
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="amf-inference" \
      org.opencontainers.image.description="MIDOG 2025 Track 2: normal vs atypical mitotic figures" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
USER user
ENTRYPOINT ["python", "inference.py"]
