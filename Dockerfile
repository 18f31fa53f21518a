# syntax=docker/dockerfile:1
# One image for every fogsched role; the role is the command (`start --roles relay`).
#   docker build -t fogsched/fogsched:0.1.0 .
# Checked by test/deploy/dockerfile.test.ts (hadolint does not install on our machines).
ARG NODE_IMAGE=node:20.19-bookworm-slim

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
# The default command runs every role, so the default check is the API's; the stack
# overrides it per service (`fogsched healthcheck --role relay`, ...).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["fogsched", "healthcheck", "--role", "api"]
ENTRYPOINT ["/usr/bin/tini", "--", "fogsched"]
CMD ["start"]
