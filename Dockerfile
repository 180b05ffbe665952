# grand-challenge inference images, MIDOG 2025 Track 2, in both of the platform's API methods
# (docs/container.md; docs/invoke.md). ./build.sh builds all four, ./test.sh runs each the
# way grand-challenge does, ./export.sh packs the GPU invoke image (or, with --exec, gpu) to upload.
#
#   cpu         docker build --target cpu .   exec mode on python:3.11-slim-bookworm +
#               requirements.txt: ONNX Runtime on the CPU and no torch, a fraction of the
#               GPU image's size. It serves the ONNX graphs the manifest names (AMF_BACKEND=onnx:
#               an ensemble without graphs is refused with one error line instead of reaching
#               for a torch that is not there). `python inference.py` reads /input, writes
#               /output, exits.
#   gpu         docker build --target gpu .   exec mode on the pytorch/pytorch base +
#               requirements-gpu.txt: ONNX Runtime with the CUDA provider (fp16 graph) and the
#               PyTorch back end, for grand-challenge's T4.
#   invoke      the same images in invoke mode (label org.grand-challenge.api-method=invoke,
#               which one image cannot carry with both values): `python -m amf serve` loads the
#               ensemble once and classifies /input into /output per POST /invoke on port 4743.
#               --build-arg EXEC_STAGE=cpu|gpu (default gpu) picks the image; the last stage,
#               so `docker build .` gives the GPU image in invoke mode (docs/invoke.md).
#
# GPU base: pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime. Torch 2.14.1+cu130 is the torch of
# requirements-dev.txt, and CUDA 13 + cuDNN 9 is the runtime onnxruntime-gpu 1.31 needs. Evidence
# that the tag is real (public repositories, searched 2026): a bug report tabulates the stock
# Docker Hub image with torch 2.14.1+cu130, cuBLAS 13.1.1.3 and cuDNN 9.24.0.43 (the versions of
# our local environment), and several Dockerfiles build FROM it, noting its Ubuntu 24.04 system
# Python 3.12 that needs PIP_BREAK_SYSTEM_PACKAGES=1 (PEP 668). CUDA 13 needs NVIDIA driver >= 580
# and compute capability >= 7.5 (the T4 is 7.5).
# CPU base: the official Python 3.11 image on Debian 12, slim variant: the Python and Debian
# release of our local environment and of the stand-in build.sh makes where no registry is
# reachable; every serving wheel has a cp311 manylinux build. Pin both digests (@sha256:...)
# once pulled.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
ARG CPU_BASE_IMAGE=python:3.11-slim-bookworm
ARG EXEC_STAGE=gpu

# ------------------------------------------------------------------------------------------ cpu
FROM --platform=linux/amd64 ${CPU_BASE_IMAGE} AS cpu

# No network at run time: nothing may reach for the Hugging Face hub (the same settings in both
# images, though only the PyTorch back end could), and ONNX Runtime's telemetry is off in every
# process, the build's own import check below included, which would otherwise leave a device id
# and an event cache in the image (amf/__init__.py says why; test_no_packet_leaves_a_long_run).
# No .pyc written at run time (the sources are compiled below, as root). ONNX Runtime is this
# image's only back end.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AMF_BACKEND=onnx

RUN groupadd --system user \
    && useradd --system --gid user --no-log-init --create-home --home-dir /home/user user

WORKDIR /opt/app

# Requirements before code, so a code change reuses this layer. PIP_BREAK_SYSTEM_PACKAGES: the
# stand-in base's Debian Python is marked externally managed (PEP 668); the official image is not.
COPY requirements.txt ./
RUN PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore python -m pip install --no-cache-dir \
        --requirement requirements.txt \
    && python -c "import onnxruntime; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"

# Weights baked in (model/manifest.json, folds and ONNX graphs): the organisers re-ran containers
# without the /opt/ml/model mount, which stays an override (amf.predict.default_model_dir).
COPY model/ model/
COPY amf/ amf/
COPY inference.py ./
RUN python -m compileall -q amf inference.py

# Last, so that the base's name (a build argument) does not invalidate the layers above.
ARG CPU_BASE_IMAGE
LABEL org.opencontainers.image.title="amf-inference-cpu" \
      org.opencontainers.image.description="MIDOG 2025 Track 2: normal vs atypical mitotic figures (ONNX Runtime, CPU)" \
      org.opencontainers.image.base.name="${CPU_BASE_IMAGE}" \
      org.grand-challenge.api-method="exec"
USER user
ENTRYPOINT ["python", "inference.py"]

# ------------------------------------------------------------------------------------------ gpu
FROM --platform=linux/amd64 ${BASE_IMAGE} AS gpu

ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system user \
    && useradd --system --gid user --no-log-init --create-home --home-dir /home/user user

WORKDIR /opt/app

# The base's torch and torchvision are held fixed by a constraint: a requirement that wanted
# another torch fails here instead of silently replacing the CUDA build.
COPY requirements-gpu.txt ./
RUN python -m pip list --format=freeze | grep -iE '^(torch|torchvision)==' > /tmp/base-torch.txt \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install --no-cache-dir \
        --constraint /tmp/base-torch.txt --requirement requirements-gpu.txt \
    && rm /tmp/base-torch.txt

COPY model/ model/
COPY amf/ amf/
COPY inference.py ./
RUN python -m compileall -q amf inference.py

ARG BASE_IMAGE
LABEL org.opencontainers.image.title="amf-inference" \
      org.opencontainers.image.description="MIDOG 2025 Track 2: normal vs atypical mitotic figures" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.grand-challenge.api-method="exec"
USER user
ENTRYPOINT ["python", "inference.py"]

# ------------------------------------------------------------------------------------ invoke
# An exec image (EXEC_STAGE: gpu, or cpu) in invoke mode: ./build.sh builds both twins, e.g.
# `docker build --target invoke --build-arg EXEC_STAGE=cpu .`; the default, the last stage, is
# the GPU image's. /output belongs to the image's user: the platform empties it between tasks,
# never makes it.
FROM ${EXEC_STAGE} AS invoke
USER root
RUN mkdir -p /output && chown user:user /output
USER user
EXPOSE 4743
LABEL org.grand-challenge.api-method="invoke"
ENTRYPOINT ["python", "-m", "amf", "serve"]
