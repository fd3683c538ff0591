# One image for every InferGate service: pick it with the command
# (infergate-collector | infergate-picker | infergate-autoscaler | infergate-sim).
# syntax=docker/dockerfile:1

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY collector collector
COPY picker picker
COPY autoscaler autoscaler
COPY sim sim
COPY bench bench
RUN python -m venv /opt/infergate \
 && /opt/infergate/bin/pip install --upgrade pip \
 && /opt/infergate/bin/pip install .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="infergate" \
      org.opencontainers.image.description="Envoy inference gateway extension: endpoint picker, collector, autoscaler, simulator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/infergate /opt/infergate
ENV PATH=/opt/infergate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 65532 is the conventional "nonroot" user; the manifests also run with a read-only root FS.
USER 65532:65532
EXPOSE 9002 9003 9090
ENTRYPOINT []
CMD ["infergate-picker", "--help"]
