# A Tuwunel image from a Tuwunel binary you already have (a release download), laid out as
# upstream's image: the binary at /usr/bin/tuwunel, ENTRYPOINT tuwunel, configured by TUWUNEL_*
# variables, its database in /var/lib/tuwunel, ports 8008 and 8448. It builds no Tuwunel: it
# packages the binary, for engines that cannot pull upstream's OCI image (Docker 20.10) or reach
# no registry. Plain Dockerfile syntax, so the legacy builder (DOCKER_BUILDKIT=0) builds it:
#
#   mkdir tuwunel-image && cp /path/to/tuwunel tuwunel-image/tuwunel
#   # only for a dynamically linked binary: its libraries (ldd lists them) in tuwunel-image/lib
#   DOCKER_BUILDKIT=0 docker build -f docker/tuwunel.Dockerfile \
#       -t ghcr.io/matrix-construct/tuwunel:v1.9.4 tuwunel-image
#
# BASE_IMAGE: any Debian-like image (upstream's is FROM scratch with a static binary; a base with
# a libc also runs a dynamically linked one). The CA bundle is added when the base lacks it.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

RUN if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && mkdir -p /var/lib/tuwunel /etc/tuwunel

# A dynamically linked binary (one built from source links liburing, libstdc++) brings the
# libraries `ldd` lists in lib/ beside it; release binaries are static and need none.
COPY . /tmp/tuwunel-image/
RUN install -m 0755 /tmp/tuwunel-image/tuwunel /usr/bin/tuwunel \
    && if [ -d /tmp/tuwunel-image/lib ]; then \
        cp -a /tmp/tuwunel-image/lib/. /usr/local/lib/ && ldconfig; \
    fi \
    && rm -rf /tmp/tuwunel-image

ENV RUST_BACKTRACE=full
EXPOSE 8008 8448
ENTRYPOINT ["tuwunel"]
