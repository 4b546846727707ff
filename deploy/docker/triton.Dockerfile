# NVIDIA Triton 2.51 (from nvidia-pytriton, as `npm test`'s set-up builds .venv-triton) with the noisesearch
# package, laid out as a clone so that `python -m noisesearch_server.triton.launch` finds both venvs; the same
# image runs the noisesearch server in front of Triton (its `triton` extra holds the client). PyTorch
# repositories (deploy/triton/pytorch) need --build-arg EXTRAS=triton,torch. From the repository root:
#   docker build -f deploy/docker/triton.Dockerfile -t noisesearch/triton .
FROM python:3.11-slim-bookworm
ARG EXTRAS=triton
WORKDIR /app
COPY proto proto
COPY servers servers
COPY deploy/triton deploy/triton
RUN python -m venv .venv && .venv/bin/pip install --no-cache-dir -e "./servers[${EXTRAS}]"
# The stub's own venv: numpy 1 (Triton 2.51's Python-backend stub reads arrays through numpy 1's layout), and
# a .pth that reaches servers/ and the main venv for everything else (scripts/setup.mjs does the same).
RUN .venv/bin/python -m venv .venv-triton \
 && .venv-triton/bin/pip install --no-cache-dir --no-deps nvidia-pytriton==0.7.0 numpy==1.26.4 \
 && printf '/app/servers\n%s\n' "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
      > "$(.venv-triton/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/noisesearch.pth"
ENV NOISESEARCH_PROTO_DIR=/app/proto PATH=/app/.venv/bin:$PATH
USER 10001
# 8001: Triton gRPC; 8002: Triton metrics; 50151 and 9470: the noisesearch server in front of it.
EXPOSE 8001 8002 50151 9470
ENTRYPOINT ["python", "-m", "noisesearch_server.triton.launch"]
CMD ["--repository", "deploy/triton/gmm", "--grpc-port", "8001", "--http-port", "8000", "--metrics-port", "8002", "--wait", "300"]
