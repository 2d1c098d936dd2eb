# syntax=docker/dockerfile:1
# Slim runtime image running the CLI (default: `start`). Build: docker build -t photo-edit-bot .
# CUDA engine image (NVIDIA CUDA 13 runtime + cuDNN 9, onnxruntime's CUDA provider from the npm registry):
#   docker build --target cuda -t photo-edit-bot:cuda .  &&  docker run --gpus all photo-edit-bot:cuda engine

FROM node:20-bookworm-slim AS builder
WORKDIR /app
# .npmrc skips onnxruntime-node's CUDA download (not on the npm registry); see README "GPU hosts".
COPY package.json package-lock.json .npmrc ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY native ./native
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

# onnxruntime's CUDA provider next to onnxruntime-node (no GPU here, so install only: `setup cuda --no-check`;
# the engine checks CUDA, cuDNN and the GPU when it starts), and the add-on that hands it ENGINE_CUDA_OPTIONS,
# compiled here with gcc (the runtime image needs no compiler).
FROM node:20-bookworm-slim AS cuda-provider
WORKDIR /app
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /app ./
RUN node dist/cli/index.js setup cuda --no-check

FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 AS cuda
ENV NODE_ENV=production \
    STATE_DIR=/data \
    LOG_PRETTY=false \
    ENGINE_DEVICE=cuda
WORKDIR /app
COPY --from=builder /usr/local/bin/node /usr/local/bin/node
COPY --from=cuda-provider /app/package.json ./
COPY --from=cuda-provider /app/node_modules ./node_modules
COPY --from=cuda-provider /app/dist ./dist
# CLIP's vocabulary, the tokenizer of single-file checkpoints.
COPY assets ./assets
COPY test/fixtures/models/sd1/model ./test/fixtures/models/sd1/model
RUN mkdir -p /data && chown ubuntu:ubuntu /data
USER ubuntu
VOLUME ["/data"]
EXPOSE 9464
ENTRYPOINT ["node", "dist/cli/index.js"]
CMD ["engine"]

FROM node:20-bookworm-slim AS runtime
# HF_HOME on the volume: hub models are kept across container restarts, shared by the engines.
ENV NODE_ENV=production \
    STATE_DIR=/data \
    HF_HOME=/data/huggingface \
    LOG_PRETTY=false
WORKDIR /app
COPY --from=builder /app/package.json ./
COPY --from=builder /app/node_modules ./node_modules
COPY --from=builder /app/dist ./dist
# CLIP's vocabulary, the tokenizer of single-file checkpoints.
COPY assets ./assets
# The tiny test checkpoint: what the engine loads (with a loud warning) when MODEL is unset.
COPY test/fixtures/models/sd1/model ./test/fixtures/models/sd1/model
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
# Health and metrics (ENGINE_HTTP_PORT).
EXPOSE 9464
ENTRYPOINT ["node", "dist/cli/index.js"]
CMD ["start"]
