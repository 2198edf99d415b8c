# slimmer on the CPU: docker build -t slimmer . && docker run --rm -v "$PWD:/work" slimmer compress /work/model.pt --arch ...
FROM python:3.11-slim

# The CPU build of torch keeps the image small; the default PyPI wheel carries CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

WORKDIR /opt/slimmer
COPY pyproject.toml README.md ./
COPY slimmer ./slimmer
COPY models ./models
# torchvision (a dependency since the README's headline uses --arch torchvision:...) from the same CPU
# index, so that `pip install .` finds a matching pair and does not fetch a CUDA torch.
RUN pip install --index-url "$TORCH_INDEX_URL" "torch>=2.10" "torchvision>=0.25" \
 && pip install . \
 && python -c "import sympy, onnxruntime.quantization, torchvision" \
 && useradd --create-home --uid 10001 slimmer

USER slimmer
WORKDIR /work
ENTRYPOINT ["slimmer"]
CMD ["--help"]
