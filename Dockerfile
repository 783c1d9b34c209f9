# syntax=docker/dockerfile:1
# One image for the agent, the aggregator and the CLI:
#   podman run IMAGE agent --config /etc/wgprobe/agent.toml --log-format json
#   podman run IMAGE aggregator --config /etc/wgprobe/aggregator.toml
#   podman run IMAGE server se-got-wg-001 --config /etc/wgprobe/agent.toml
# The userspace WireGuard engine opens ordinary UDP sockets: the image runs as an unprivileged user and needs no
# capability (an agent.toml `netns` key is for hosts; in a container, join the namespace with --network instead).
#
# Build: podman build -t wgprobe .   (docker build works the same)
# Behind a TLS-intercepting proxy, hand pip the proxy's CA bundle as a build secret; it never enters a layer:
#   podman build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt -t wgprobe .

# Debian 12.11 slim (bookworm-20250520-slim), pinned by digest: the same base bytes on every build. Debian's own
# python3 is the interpreter (3.11, what the project targets), updated through the distribution.
ARG BASE_IMAGE=docker.io/library/debian:12.11-slim@sha256:90522eeb7e5923ee2b871c639059537b30521272f10ca86fdbbbb2b75a8c40cd
ARG PYTHON_DEB_VERSION=3.11.2-1+b1

FROM ${BASE_IMAGE} AS base
ARG PYTHON_DEB_VERSION
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python3=${PYTHON_DEB_VERSION}" \
    && rm -rf /var/lib/apt/lists/*

FROM base AS build
ARG PYTHON_DEB_VERSION
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python3-venv=${PYTHON_DEB_VERSION}" \
    && rm -rf /var/lib/apt/lists/*
# constraints.txt holds the exact versions CI tested (scripts/lock.sh writes it); PIP_CONSTRAINT reaches pip's
# isolated build environment too, so the build backend is pinned as well.
ENV PIP_CONSTRAINT=/src/constraints.txt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# The runtime dependencies alone first (read from pyproject.toml, versions from constraints.txt): this layer is
# reused until either file changes, so a source change rebuilds in seconds.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && python3 -m venv /opt/wgprobe \
    && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && /opt/wgprobe/bin/pip install --requirement /tmp/requirements.txt
COPY README.md ./
COPY probe ./probe
COPY agents ./agents
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/wgprobe/bin/pip install --no-deps /src \
    && /opt/wgprobe/bin/pip uninstall --yes pip setuptools \
    && /opt/wgprobe/bin/probe --version

FROM base AS runtime
LABEL org.opencontainers.image.title="wgprobe" \
      org.opencontainers.image.description="End-to-end connectivity probing for fleets of WireGuard VPN relays" \
      org.opencontainers.image.licenses="MIT"
# A fixed numeric uid, so orchestrators can check runAsNonRoot and volumes can be chowned ahead of time.
RUN groupadd --gid 10001 wgprobe \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/wgprobe --create-home \
        --shell /usr/sbin/nologin wgprobe \
    && install -d -o wgprobe -g wgprobe -m 0750 /etc/wgprobe
COPY --from=build /opt/wgprobe /opt/wgprobe
ENV PATH=/opt/wgprobe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/wgprobe
# 9108: an agent's /metrics and /probe; 9109: the aggregator's /metrics, API and status page. Both listen on
# loopback unless [http] listen says otherwise (in a container: listen = "0.0.0.0:PORT").
EXPOSE 9108 9109
ENTRYPOINT ["probe"]
CMD ["--help"]
