# letta-appservice image: builder installs the package into a venv, the runtime stage copies it.
# Plain Dockerfile syntax only, so the legacy builder (old engines, docker-compose 1.x) works too.
#
# BASE_IMAGE: any Debian-like image with Python 3.11+ and its venv module, e.g. the test suite's
# base made with debootstrap where no registry can be reached. Both stages use it, so the venv
# copied into the runtime stage finds the same interpreter.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# python3: Debian's python3 package has no `python`.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore keeps secrets, data, tests and the local venv out of the context.
COPY . .
RUN pip install . \
    && install -m 0755 docker/entrypoint.sh /opt/venv/bin/docker-entrypoint.sh


FROM ${BASE_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONFIG_PATH=/data/config.yaml \
    REGISTRATION_PATH=/data/registration.yaml \
    HEALTHCHECK_URL=http://127.0.0.1:29330/health

# A fixed uid/gid (1000) so bind-mounted data directories can be prepared on the host.
RUN groupadd --system --gid 1000 letta \
    && useradd --system --uid 1000 --gid letta --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin letta \
    && mkdir -p /data /registration \
    && chown letta:letta /data /registration

COPY --from=builder /opt/venv /opt/venv

USER letta
WORKDIR /data
VOLUME /data
EXPOSE 29330

# No curl in either base: ask /health with the venv's Python, which exists on both.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]

ENTRYPOINT ["docker-entrypoint.sh"]
