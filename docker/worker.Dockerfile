# Worker image for the streaming job on Dataflow: Beam's Python 3.11 SDK
# image, torch built for CUDA, and streamlearn. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t REGION-docker.pkg.dev/PROJECT/streamlearn/worker:0.1.0 .
# and pass the tag to `streamlearn deploy --image`. The Beam version must match
# the one that submits the job.
FROM apache/beam_python3.11_sdk:2.77.0

# The CUDA build of torch from PyTorch's wheel index. Dataflow installs the
# NVIDIA driver on the worker VM (worker_accelerator ...;install-nvidia-driver).
# NOTE: the cu128 index is an assumption; this image has not been built here.
RUN pip install --no-cache-dir "torch==2.13.0" \
        --index-url https://download.pytorch.org/whl/cu128

COPY pyproject.toml README.md /opt/streamlearn/
COPY online_model /opt/streamlearn/online_model
COPY rollback /opt/streamlearn/rollback
COPY streaming /opt/streamlearn/streaming
RUN pip install --no-cache-dir /opt/streamlearn

ENTRYPOINT ["/opt/apache/beam/boot"]
