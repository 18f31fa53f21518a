# syntax=docker/dockerfile:1
# One image for every fogsched role; the role is the command (`start --roles relay`).
#   docker build -t fogsched/fogsched:0.1.0 .
# Checked by test/deploy/dockerfile.test.ts (hadolint does not install on our machines).
# Node 24 (Active LTS "Krypton"), pinned by digest: the tag names the version for people, the
# digest fixes the exact image (docker-library's node:24.18.0-bookworm-slim index, all platforms).
# To move on: `docker buildx imagetools inspect node:24-bookworm-slim` and copy version and digest.
ARG NODE_IMAGE=node:24.18.0-bookworm-slim@sha256:6f7b03f7c2c8e2e784dcf9295400527b9b1270fd37b7e9a7285cf83b6951452d

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# The dashboard (/ui) is bundled by the same build into dist/ui.
COPY ui ./ui
RUN npm run build

FROM ${NODE_IMAGE} AS runtime
# tini as PID 1: forwards SIGTERM to node (graceful stop of the roles) and reaps zombies.
ARG TINI_VERSION=0.19.0-1+b3
RUN apt-get update \
 && apt-get install -y --no-install-recommends "tini=${TINI_VERSION}" \
 && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund \
 && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY bin ./bin
COPY migrations ./migrations
RUN chmod 0755 bin/fogsched.js \
 && ln -s /app/bin/fogsched.js /usr/local/bin/fogsched
# The image's unprivileged user (uid 1000); the app files stay root-owned and read-only to it.
USER node
EXPOSE 8080
# Every role serves /healthz on its ops port (OPS_PORT, default 9464): healthy while its loops make
# progress, whatever PostgreSQL or the broker do (that is /readyz). Checked with node's own fetch
# (the image has no curl or wget; the fogsched CLI would load its config and modules every time).
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.OPS_PORT||9464)+'/healthz',{signal:AbortSignal.timeout(4000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--", "fogsched"]
CMD ["start"]
