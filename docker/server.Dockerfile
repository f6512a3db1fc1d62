# The coordinator's image: `consortia server start` (a Flower SuperLink with TLS that lets in
# registered sites only) and the coordinator's other commands (certs, site register, run,
# audit). The server combines the sites' updates and trains nothing itself, so it gets the
# CPU build of torch.
#
# Build from the repository root (the build context):
#   docker build -f docker/server.Dockerfile -t consortia-server:latest .
# Run (certificates from `consortia certs server`, see docker/README.md):
#   docker run -p 9092:9092 -v consortia-server-state:/var/lib/consortia/server \
#       -v consortia-runs:/var/lib/consortia/runs -v /path/to/server-certs:/etc/consortia/certs:ro \
#       consortia-server:latest

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv with torch (CPU) and Consortia -------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/consortia
ENV PATH=/opt/consortia/bin:$PATH
# torch first, from the CPU wheel index: the project's `torch>=2.4,<2.14` is then satisfied
# and pip does not pull a multi-GB CUDA build from PyPI.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
COPY common/ common/
COPY server/ server/
COPY client/ client/
# The whole distribution: the server sends the hash of the installed code (common, client,
# server) with every run and the sites check it against the code they approved. The
# tensorboard extra: live TensorBoard logging ([run.report] tensorboard = true).
RUN pip install ".[tensorboard]" \
 && python -c "import torch, consortia.common.cli; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"

# ---- runtime ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG UID=10001
ARG GID=10001
LABEL org.opencontainers.image.title="consortia-server" \
      org.opencontainers.image.description="Consortia coordinator: Flower SuperLink with TLS, registered sites only" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/consortia/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    HOME=/home/consortia
# A fixed uid/gid: the node image uses the same, and docker/compose.yaml's pki service
# hands the key files to it (PKI_OWNER).
RUN groupadd --gid "${GID}" consortia \
 && useradd --uid "${UID}" --gid consortia --home-dir /home/consortia --create-home \
        --shell /usr/sbin/nologin consortia \
 && mkdir -p /var/lib/consortia/server /var/lib/consortia/runs /etc/consortia/certs \
 && chown -R consortia:consortia /var/lib/consortia /etc/consortia
COPY --from=build /opt/consortia /opt/consortia
# Helpers of the compose demo (docker/compose.yaml): its pki and register services.
COPY --chmod=0755 docker/pki-init.sh /usr/local/bin/consortia-pki-init
COPY --chmod=0755 docker/register-sites.sh /usr/local/bin/consortia-register-sites
USER consortia
WORKDIR /home/consortia
# SuperLink state (database, Flower home, logs, the registry of site keys), run folders,
# and the server's TLS files (ca.pem, server.pem, server.key; mount read-only).
VOLUME ["/var/lib/consortia/server", "/var/lib/consortia/runs", "/etc/consortia/certs"]
# The SuperLink's public port serves the Fleet API for the nodes only. The Control API for
# `consortia run` and `consortia site` listens on the container's loopback (9093): use it
# with `docker exec`, or from a container sharing this one's network namespace.
EXPOSE 9092
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 9092), 3).close()"]
ENTRYPOINT ["consortia"]
CMD ["server", "start", "--host", "0.0.0.0", "--port", "9092", "--control-port", "9093", \
     "--state-dir", "/var/lib/consortia/server", "--runs-dir", "/var/lib/consortia/runs", \
     "--certs", "/etc/consortia/certs"]
