# The Python model server (gmm by default; PyTorch models with --build-arg EXTRAS=torch). Built from the
# repository root: docker build -f deploy/docker/model-server.Dockerfile -t noisesearch/model-server .
FROM python:3.11-slim-bookworm
ARG EXTRAS=""
WORKDIR /app
COPY proto proto
COPY servers servers
RUN pip install --no-cache-dir "./servers${EXTRAS:+[$EXTRAS]}"
# Installed (not editable), the package cannot find the contract beside itself: name it.
ENV NOISESEARCH_PROTO_DIR=/app/proto
USER 10001
# 50151: gRPC (Denoiser, Verifier, grpc.health.v1); 9470: --metrics-port (noisesearch_server_*).
EXPOSE 50151 9470
ENTRYPOINT ["python", "-m", "noisesearch_server"]
CMD ["--host", "0.0.0.0", "--port", "50151", "--metrics-port", "9470"]
