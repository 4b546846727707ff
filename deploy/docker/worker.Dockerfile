# The TypeScript side: `noisesearch worker` (and the CLI: search, campaign, dashboard). Built from the repository
# root: docker build -f deploy/docker/worker.Dockerfile -t noisesearch/worker .
FROM node:20-bookworm-slim AS build
WORKDIR /app
# better-sqlite3 is native: its prebuilt binary is fetched at install, and node-gyp is the fallback.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json ./
COPY proto proto
COPY src src
COPY workflows workflows
# tsc and the workflow bundle (dist/workflow-bundle.js), so a worker starts without bundling at run time.
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/dist dist
COPY proto proto
COPY bin bin
USER node
# 9464: --metrics (noisesearch_*); 9465: --temporal-metrics (the Temporal SDK's temporal_*).
EXPOSE 9464 9465
ENTRYPOINT ["node", "bin/noisesearch.js"]
CMD ["worker", "--help"]
