# gemma-chat's OpenAI-compatible server on CPU, with the embedded Gemma 3 270M.
#   docker build -t gemma-chat .
#   docker run -p 8000:8000 gemma-chat
# torch comes from PyTorch's CPU wheel index (PyPI's x86-64 wheel is the multi-GB CUDA build);
# override TORCH_INDEX_URL to use another mirror.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GEMMA_ENVIRONMENT=production \
    GEMMA_SERVER__HOST=0.0.0.0 \
    GEMMA_SERVER__PORT=8000 \
    GEMMA_CACHE_DIR=/var/cache/gemma-chat

# A C compiler: the int8 kernels are built for the CPU they run on, at first use.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt pyproject.toml README.md ./
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==2.13.0" \
    && pip install -r requirements.txt
COPY src/ ./src/
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 gemma \
    && mkdir -p "$GEMMA_CACHE_DIR" && chown gemma "$GEMMA_CACHE_DIR"
USER gemma

# Convert the embedded model once, at build time, so that the container starts in seconds.
RUN gemma-chat info > /dev/null

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["python", "-m", "gemma_chat.server.main"]
