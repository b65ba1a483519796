# The pdscaler operator image. Build it with scripts/build-image.sh, which makes the two base
# images from Debian bookworm packages (no registry needed) and passes them in:
#   BASE_BUILD    bookworm + python3.11 + venv support (pip's wheel)
#   BASE_RUNTIME  bookworm + python3.11 + libstdc++6 + CA certificates (no pip, no compilers)
# Other bases work too: any Debian bookworm image with /usr/bin/python3.11 and libstdc++6
# (BASE_BUILD also with python3.11-venv).
ARG BASE_BUILD=localhost/pdscaler-base:build
ARG BASE_RUNTIME=localhost/pdscaler-base:runtime

# ---- dependencies: their own layer, rebuilt only when pyproject.toml changes
FROM ${BASE_BUILD} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml ./
# The project's runtime dependencies, read from pyproject.toml. The secret is the CA bundle for
# networks that intercept HTTPS (empty otherwise: pip then uses the base's certificates).
RUN --mount=type=secret,id=cacert,target=/run/secrets/cacert \
    python3.11 -m venv /opt/pdscaler \
 && python3.11 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
 && if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && /opt/pdscaler/bin/pip install --only-binary=:all: -r requirements.txt

# ---- the project itself, then pip and setuptools removed from the environment
FROM deps AS app
COPY README.md ./
COPY planner ./planner
COPY operator ./operator
RUN --mount=type=secret,id=cacert,target=/run/secrets/cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && /opt/pdscaler/bin/pip install --no-deps . \
 && /opt/pdscaler/bin/python -m compileall -q /opt/pdscaler/lib \
 && /opt/pdscaler/bin/pip uninstall -y -q pip setuptools \
 && /opt/pdscaler/bin/pdscaler --help > /dev/null

# ---- runtime: interpreter + the environment, as uid/gid 65532, read-only root filesystem
FROM ${BASE_RUNTIME}
# The group first: a user added with its own group would get the next free gid instead.
RUN echo 'nonroot:x:65532:' >> /etc/group \
 && echo 'nonroot:x:65532:65532:pdscaler:/tmp:/usr/sbin/nologin' >> /etc/passwd
COPY --from=app /opt/pdscaler /opt/pdscaler
RUN /opt/pdscaler/bin/pdscaler --help > /dev/null
ENV PATH=/opt/pdscaler/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
USER 65532:65532
WORKDIR /tmp
# /metrics and /healthz (PDSCALER_METRICS_PORT, PDSCALER_HEALTH_PORT)
EXPOSE 9808 8080
ENTRYPOINT ["pdscaler"]
CMD ["operator", "run"]
