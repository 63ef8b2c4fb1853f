# The router's OCI image: multi-stage, slim, non-root, read-only root filesystem friendly.
#   docker build -t api-router:0.1.0 .
#   docker run --read-only -v router-data:/var/lib/api-router --tmpfs /tmp -p 8080:8080 api-router:0.1.0 serve --demo
# The build stage runs deploy/image/install.sh, the same steps `make image-check` runs in CI (no
# registry is reachable there for a base image; helm/api-router/README.md).
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src/ src/
COPY generated/ generated/
COPY deploy/image/install.sh /usr/local/bin/router-install
RUN router-install /src /opt/router

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="api-router" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
RUN groupadd --system --gid 10001 router \
    && useradd --system --uid 10001 --gid router --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin router \
    && install -d -o router -g router -m 0750 /var/lib/api-router
COPY --from=build /opt/router /opt/router
# Nothing is written outside /var/lib/api-router (mount a volume there) and /tmp (an emptyDir under --read-only).
ENV PATH=/opt/router/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ROUTER_HOST=0.0.0.0 \
    ROUTER_PORT=8080 \
    ROUTER_DATA_DIR=/var/lib/api-router \
    ROUTER_BUILD_VERSION=${VERSION} \
    ROUTER_BUILD_COMMIT=${COMMIT}
WORKDIR /var/lib/api-router
VOLUME ["/var/lib/api-router"]
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v1/status/healthz' % os.environ.get('ROUTER_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["router"]
CMD ["serve"]
