# The ingestion worker, for docker-compose and container platforms.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY schema ./schema
RUN pip install --no-cache-dir '.[server]' && useradd --system pudato
USER pudato
EXPOSE 9108
ENV PUDATO_METRICS_HOST=0.0.0.0
ENTRYPOINT ["pudato-registry"]
# Migrations and topics are a one-shot job before it (`migrate`, `topics create`), run
# with a role that may do DDL; the worker itself needs none (see the README).
CMD ["worker"]
