# The dashboard and REST API. No ML stack: the web process never imports torch.
FROM python:3.11-slim
WORKDIR /opt/tunedeck
COPY pyproject.toml setup.py README.md alembic.ini ./
COPY app app
COPY runspec runspec
COPY tunedeck_state tunedeck_state
COPY tunedeck_jobs tunedeck_jobs
COPY tunedeck_cli tunedeck_cli
COPY worker worker
COPY tunedeck_demo tunedeck_demo
COPY templates templates
COPY migrations migrations
# Editable: templates/ and migrations/ stay beside the code, where the app looks for them.
RUN pip install --no-cache-dir -e .
ENV TUNEDECK_DATA_DIR=/data
EXPOSE 8000
CMD ["sh", "-c", "tunedeck db upgrade && tunedeck serve --no-worker --host 0.0.0.0 --port 8000"]
