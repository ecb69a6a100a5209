# batchgate container image: `batchgate` is the entrypoint; the app is mounted or copied in.
#
#   podman build -t batchgate:0.1.0 .            (or docker build)
#   podman run --rm -v "$PWD/examples:/app:ro" -p 8000:8000 -e BATCHGATE_API_KEYS=secret \
#       batchgate:0.1.0 serve /app/textkit.py --host 0.0.0.0
#
# Build arguments:
#   PYTHON_IMAGE  the base of both stages: any Debian-like image with python3 (3.11+) and
#                 its venv module; the default is the official slim image.
#   EXTRAS        the package extras to install (redis, aws); empty for the embedded only.
#   PIP_OPTIONS   extra pip options, e.g. "--no-index --find-links /src/wheels" to build
#                 offline from wheels placed in a `wheels/` folder of the build context
#                 (the context is mounted at /src while pip runs, never copied in).
# See docs/deploy/containers.md.

ARG PYTHON_IMAGE=docker.io/library/python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=redis,aws
ARG PIP_OPTIONS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# One virtual environment, copied whole into the final stage: the source tree, the wheels
# and pip's caches stay behind. Every dependency comes as a wheel at its pinned version,
# so no compiler is needed (and none is in either stage of the slim base).
RUN --mount=type=bind,target=/src,rw \
    python3 -m venv /opt/batchgate \
    && cd /src \
    && /opt/batchgate/bin/pip install ${PIP_OPTIONS} --only-binary=:all: \
        -c constraints.txt ".${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE}
# A fixed numeric id, so that Kubernetes can check runAsNonRoot without a name lookup.
RUN groupadd --gid 10001 batchgate \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/batchgate \
        --create-home --shell /usr/sbin/nologin batchgate \
    && mkdir /app
COPY --from=build /opt/batchgate /opt/batchgate
ENV PATH=/opt/batchgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BATCHGATE_DATA_DIR=/var/lib/batchgate
WORKDIR /app
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["batchgate"]
CMD ["--help"]
