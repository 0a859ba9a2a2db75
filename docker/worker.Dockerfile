# A GPU worker: CUDA PyTorch plus tunedeck's training stack.
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
WORKDIR /opt/tunedeck
COPY pyproject.toml README.md alembic.ini ./
COPY app app
COPY runspec runspec
COPY worker worker
COPY tunedeck_demo tunedeck_demo
COPY templates templates
COPY migrations migrations
# torch comes with the base image; ".[train]" adds transformers, peft, bitsandbytes, datasets, accelerate.
RUN pip install --no-cache-dir -e ".[train]"
ENV TUNEDECK_DATA_DIR=/data
CMD ["tunedeck", "worker"]
