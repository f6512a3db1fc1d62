# A hospital's node: `consortia node start` (a Flower SuperNode plus Consortia's executor)
# beside the site's data. One Dockerfile, two variants (build argument VARIANT):
#   cpu  (default): torch's CPU build, from the PyTorch CPU wheel index;
#   cuda: torch's CUDA build. The Linux x86_64 wheels of torch on PyPI are CUDA builds that
#         carry their CUDA runtime, so the base image stays python:3.11-slim; the host needs
#         the NVIDIA driver and the NVIDIA Container Toolkit (`docker run --gpus all`).
#         TORCH_INDEX_URL picks another CUDA build (one of PyTorch's cuXXX wheel indexes).
#
# Build from the repository root (the build context):
#   docker build -f docker/node.Dockerfile -t consortia-node:cpu .
#   docker build -f docker/node.Dockerfile --build-arg VARIANT=cuda -t consortia-node:cuda .

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv with torch and Consortia (with the DICOM codecs) ---------------
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/consortia
ENV PATH=/opt/consortia/bin:$PATH
# torch first: the project's `torch>=2.4,<2.14` is then satisfied as installed here.
RUN set -eu; \
    case "${VARIANT}" in \
      cpu) pip install "torch==${TORCH_VERSION}" \
               --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) if [ -n "${TORCH_INDEX_URL}" ]; then \
                pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"; \
            else \
                pip install "torch==${TORCH_VERSION}"; \
            fi ;; \
      *) echo "VARIANT must be cpu or cuda, not '${VARIANT}'" >&2; exit 2 ;; \
    esac
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
COPY common/ common/
COPY server/ server/
COPY client/ client/
# `codecs`: decoders for compressed DICOM (JPEG, JPEG-LS, JPEG 2000, RLE), common in
# hospital archives. The whole distribution is installed: the app hash that a site approves
# covers common, client and server, and must equal the server's.
RUN pip install ".[codecs]" \
 && python -c "import torch, consortia.common.cli; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"

# ---- runtime ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VARIANT=cpu
ARG UID=10001
ARG GID=10001
LABEL org.opencontainers.image.title="consortia-node" \
      org.opencontainers.image.description="Consortia hospital node: Flower SuperNode, DP-SGD training beside the data" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/consortia/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    HOME=/home/consortia \
    CONSORTIA_IMAGE_VARIANT=${VARIANT}
# Same uid/gid as the server image. The mount points exist and belong to the node's user,
# so that empty named volumes mounted there are writable by it.
RUN groupadd --gid "${GID}" consortia \
 && useradd --uid "${UID}" --gid consortia --home-dir /home/consortia --create-home \
        --shell /usr/sbin/nologin consortia \
 && mkdir -p /data /var/lib/consortia/node /etc/consortia/keys \
 && chown -R consortia:consortia /data /var/lib/consortia /etc/consortia
COPY --from=build /opt/consortia /opt/consortia
# Helper of the compose demo (docker/compose.yaml): demo data and run approvals per site.
COPY --chmod=0755 docker/site-init.sh /usr/local/bin/consortia-site-init
USER consortia
WORKDIR /home/consortia
# The node's state: privacy ledgers, audit log, run approvals, Flower's state, logs and the
# cache of preprocessed arrays. Mount a named volume here so that restarts keep it.
# Mount the data read-only at /data, the site's key and the consortium CA at
# /etc/consortia/keys (read-only) and the site config at /etc/consortia/site.toml.
VOLUME ["/var/lib/consortia/node"]
ENTRYPOINT ["consortia"]
CMD ["node", "start", "--site-config", "/etc/consortia/site.toml"]
