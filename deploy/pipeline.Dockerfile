# The pipeline image: flows/, data_contracts/, bento/ and prefect.yaml with the locked
# environment (uv.lock, `uv sync --frozen`), for flow runs on a kubernetes (or docker) work pool
# and the pool's worker. Built by `make pipeline-image` from `git archive HEAD`, so it holds the
# committed tree of the commit it is tagged with, and nothing else (no .venv, no .fraud state,
# no credentials: those come from the environment at run time).
FROM python:3.11-slim

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
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --group kubernetes --no-install-project
COPY data_contracts ./data_contracts
COPY flows ./flows
COPY bento ./bento
COPY prefect.yaml bentofile.yaml ./
RUN uv sync --frozen --no-dev --group kubernetes && \
    python3 -m pip uninstall -y uv && \
    find /app/.venv/lib -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} + && \
    useradd --uid 1000 --user-group --home-dir /home/fraud --create-home fraud

ENV PATH=/app/.venv/bin:$PATH
# the code and environment stay root's: flow runs cannot change what they run
USER 1000:1000
CMD ["prefect", "version"]
