# syntax=docker/dockerfile:1
# One image for the API, the workers and the migration step (docker-compose.yml picks the
# command). Stages: the Python environment; the OpenAPI schema the UI's typed client is
# generated from; the UI built with Node; and the runtime, which has no Node and no build tools
# but g++: torch.compile builds the fused quantizer kernels with it (quantcore/fusion.py).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${PYTHON_IMAGE} AS python
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY quantcore quantcore
COPY api api
COPY worker worker
COPY migrations migrations
RUN python -m venv /venv && /venv/bin/pip install -e .

FROM python AS schema
RUN /venv/bin/python -m api openapi > /openapi.json

FROM ${NODE_IMAGE} AS ui
WORKDIR /app/frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend/ ./
COPY --from=schema /openapi.json /openapi.json
RUN OPENAPI_JSON=/openapi.json npm run build

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/venv/bin:$PATH QS_DATA_DIR=/data
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 quant && mkdir -p /data && chown quant /data
COPY --from=python /venv /venv
COPY --from=python /app /app
COPY --from=ui /app/frontend/dist /app/frontend/dist
WORKDIR /app
USER quant
EXPOSE 8000
CMD ["python", "-m", "api", "serve", "--host", "0.0.0.0", "--port", "8000"]
