# steerd image. GPU by default (CUDA 12 + cuDNN 9 runtime, onnxruntime-node's CUDA 12 build);
# `--build-arg VARIANT=cpu` builds a CPU-only image without the CUDA base.
ARG VARIANT=gpu

FROM node:20-bookworm-slim AS base-cpu
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04 AS base-gpu
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl gnupg tini \
 && curl -fsSL https://deb.nodesource.com/setup_20.x | bash - \
 && apt-get install -y --no-install-recommends nodejs \
 && rm -rf /var/lib/apt/lists/*

FROM base-${VARIANT}
ARG VARIANT
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# .npmrc skips onnxruntime-node's CUDA download; the GPU image opts back in.
RUN if [ "$VARIANT" = "gpu" ]; then export ONNXRUNTIME_NODE_INSTALL=cuda12; fi \
 && npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY bin ./bin
COPY src ./src
COPY routes ./routes
COPY openapi.yaml ./
RUN useradd --create-home --uid 10001 steerd && mkdir -p /data /cache && chown steerd /data /cache
USER steerd
ENV HOST=0.0.0.0 PORT=8080 STEERD_DATA=/data STEERD_CACHE=/cache
EXPOSE 8080
VOLUME ["/data", "/cache"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/readyz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["tini", "--", "node", "bin/steerd.js"]
CMD ["serve"]
