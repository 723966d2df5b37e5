# syntax=docker/dockerfile:1
# The meshgate image: `meshgate serve` as a non-root user on a slim Python base.
#
#   docker build -t meshgate:0.1.0 .
#   docker run --rm -v "$PWD/examples:/etc/meshgate/policy:ro" meshgate:0.1.0 \
#     serve --policy /etc/meshgate/policy/policy.yaml
#
# The base is pinned by exact tag (Python 3.11.14 on Debian 13 "trixie", slim). For reproducible builds
# pin the digest as well, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-trixie@sha256:<digest from `docker buildx imagetools inspect`>
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

# --- build: a virtualenv with meshgate and its dependencies (protos compiled by setup.py) -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/meshgate
ENV PATH=/opt/meshgate/bin:$PATH
WORKDIR /src
# what `pip install .` reads: project metadata, the build hook, the .proto sources and the package
COPY pyproject.toml setup.py README.md ./
COPY proto/ proto/
COPY meshgate/ meshgate/
# the same install CI runs (the README's: pip install -e '.[test,dev]'), without the editable flag and
# without the test/dev extras, which the image does not need; the import checks the span exporter too
RUN python -m pip install --upgrade pip \
 && pip install . \
 && cd / \
 && meshgate --help > /dev/null \
 && python -c "import meshgate.server, meshgate._proto.admin_pb2, opentelemetry.exporter.otlp.json.http.trace_exporter"

# --- runtime: the interpreter and the virtualenv, nothing else -------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="meshgate" \
      org.opencontainers.image.description="ext_authz, global rate limit and xDS control plane for AI inference" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/meshgate /opt/meshgate
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the chart (pip compiled .pyc at build)
ENV PATH=/opt/meshgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# a fixed numeric non-root user (the chart runs it as 65532 with runAsNonRoot)
USER 65532:65532
WORKDIR /tmp
# ext_authz, ratelimit, xDS (gRPC) and Prometheus /metrics (HTTP)
EXPOSE 9001 9002 9003 18000 9090
ENTRYPOINT ["meshgate"]
CMD ["serve", "--policy", "/etc/meshgate/policy/policy.yaml"]
