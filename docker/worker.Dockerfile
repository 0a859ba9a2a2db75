# A GPU worker: CUDA PyTorch plus tunedeck's training stack.
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
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
# torch comes with the base image; ".[train]" adds transformers, peft, bitsandbytes, datasets, accelerate, and
# ".[gpu]" Liger's fused Triton kernels (training.liger_kernel). FlashAttention (training.attn_implementation)
# is not installed: flash-attn builds against the image's CUDA toolkit (a devel image), see docs/operations.md.
RUN pip install --no-cache-dir -e ".[train,gpu]"
ENV TUNEDECK_DATA_DIR=/data
CMD ["tunedeck", "worker"]
