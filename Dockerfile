# syntax=docker/dockerfile:1
# steerd: one image whose command is `serve` (the HTTP API) or `worker` (an engine on the Redis queue).
#   docker build -t steerd:gpu .                         # CUDA 12 + cuDNN 9, onnxruntime-node's CUDA 12 build
#   docker build -t steerd:cpu --build-arg VARIANT=cpu . # no CUDA base, for machines without a GPU
ARG VARIANT=gpu
ARG NODE_IMAGE=node:24-bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

# ---- build: production node_modules. No compile step: tsx (a regular dependency) runs the
# TypeScript sources, so dev dependencies (tap, typescript, @types) are never installed.
FROM ${NODE_IMAGE} AS build
ARG VARIANT
WORKDIR /app
COPY package.json package-lock.json ./
# onnxruntime-node's install script downloads its CUDA providers. npm 11.19+ does not run it
# (package.json's allowScripts denies it); ONNXRUNTIME_NODE_INSTALL=skip stops it under an npm that
# does not read allowScripts. The GPU variant then runs it on purpose, for CUDA 12.
RUN ONNXRUNTIME_NODE_INSTALL=skip npm ci --omit=dev --no-audit --no-fund \
 && if [ "$VARIANT" = gpu ]; then npm run install:cuda; fi \
 && npm cache clean --force

# ---- runtime bases
FROM ${NODE_IMAGE} AS runtime-cpu
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_IMAGE} AS runtime-gpu
# Node from the official image: its binary needs glibc >= 2.28 and libstdc++ (Ubuntu 22.04: 2.35).
COPY --from=build /usr/local/bin/node /usr/local/bin/node
# The Vulkan loader for `--provider webgpu`: the NVIDIA container runtime mounts the driver's Vulkan
# part only when the capabilities include `graphics`. The default stays `cuda` until `npm run
# gpu-check` has compared the two on a GPU (README, GPU notes).
RUN apt-get update && apt-get install -y --no-install-recommends tini libvulkan1 && rm -rf /var/lib/apt/lists/*
ENV STEERD_PROVIDER=cuda NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics

# ---- runtime
FROM runtime-${VARIANT}
ARG VARIANT
LABEL org.opencontainers.image.title="steerd" org.opencontainers.image.description="steerd (${VARIANT})"
RUN useradd --create-home --uid 10001 steerd && mkdir -p /data /cache && chown steerd:steerd /data /cache
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY src ./src
COPY routes ./routes
COPY playground ./playground
COPY docker/healthcheck.mjs ./docker/
USER steerd
# the Hugging Face hub cache on the cache volume too: kept across restarts, shared with the workers,
# and on the same filesystem as STEERD_CACHE (steerd serves snapshots through hard links)
ENV HOST=0.0.0.0 PORT=8080 STEERD_DATA=/data STEERD_CACHE=/cache HF_HOME=/cache/huggingface
EXPOSE 8080
VOLUME ["/data", "/cache"]
# `serve`: GET /readyz (model loaded, Redis reachable, not draining). `worker` serves no HTTP: the
# script reports it healthy while it runs (see docker/healthcheck.mjs). The start period covers a
# first model download.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30m --retries=3 CMD ["node", "docker/healthcheck.mjs"]
ENTRYPOINT ["tini", "--", "node", "bin/steerd.js"]
CMD ["serve"]
