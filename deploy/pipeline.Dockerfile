# The pipeline image: flows/, data_contracts/, bento/ and prefect.yaml with the locked
# environment (uv.lock, `uv sync --frozen`), the Docker client and HAProxy, for flow runs on the
# docker work pool of the production profile (or a kubernetes pool) and the pool's worker. Built by
# `make pipeline-image` from `git archive HEAD`, so it holds the committed tree of the commit it
# is tagged with, and nothing else (no .venv, no .fraud state, no credentials: those come from
# the environment at run time).
FROM python:3.11-slim

# The Docker client alone, not the engine (a release builds and smoke-tests the bento image
# through the engine's socket that the Docker work pool mounts): the `docker` binary of Debian's
# docker.io package.
# HAProxy (Debian's 2.6, as on the host): a release that rolls the running fleet validates the
# balancer's next configuration with `haproxy -c` before the graceful reload. One layer, with
# apt's lists and caches removed in it (they would weigh ~80 MB).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy && \
    cd /tmp && apt-get download -qq docker.io && \
    dpkg-deb --fsys-tarfile docker.io_*.deb | tar -xO ./usr/bin/docker >/usr/local/bin/docker && \
    chmod 0755 /usr/local/bin/docker && \
    rm -rf /tmp/docker.io_*.deb /var/lib/apt/lists/* /var/cache/apt/*.bin && \
    docker --version && haproxy -v

ENV UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    BENTOML_DO_NOT_TRACK=true
WORKDIR /app

# uv only while installing; the same version as the lock was made with
RUN python3 -m pip install --no-cache-dir "uv==0.13.9"

# dependencies first (a layer that changes only with the lock), then the project itself
COPY pyproject.toml uv.lock ./
# (no package's `tests` folder is deleted: evidently imports evidently.legacy.tests at run time)
RUN uv sync --frozen --no-dev --group kubernetes --no-install-project
COPY README.md prefect.yaml bentofile.yaml ./
COPY data_contracts ./data_contracts
COPY bento ./bento
COPY flows ./flows
RUN uv sync --frozen --no-dev --group kubernetes && \
    python3 -m pip uninstall -y uv && \
    useradd --uid 1000 --user-group --home-dir /home/fraud --create-home fraud

# the commit of the tree inside (there is no .git here): releases record it, and a run whose
# work pool expects another commit stops before training (FRAUD_EXPECTED_COMMIT)
ARG GIT_COMMIT=unknown
ENV PATH=/app/.venv/bin:$PATH \
    FRAUD_GIT_COMMIT=$GIT_COMMIT
# the code and environment stay root's: flow runs cannot change what they run
USER 1000:1000
CMD ["prefect", "version"]
