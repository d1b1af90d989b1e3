# DreamerV2-TF2 on the CPU: trains Pong with the atari config by default.
#
#   docker build -t dreamerv2 .
#   docker run --rm -v ~/logdir:/logdir dreamerv2
#   docker run --rm -v ~/logdir:/logdir dreamerv2 \
#     python dreamerv2/train.py --logdir /logdir/atari_breakout/dreamerv2/1 \
#     --configs defaults atari --task atari_breakout
#
# GPU: install TensorFlow with its CUDA libraries from pip by adding, before the
# `pip install` line,
#   RUN sed -i 's/^tensorflow==2.21.0/tensorflow[and-cuda]==2.21.0/' requirements.txt
# (or start FROM a CUDA-enabled TensorFlow image with Python 3.11 instead of
# python:3.11-slim), then run with `docker run --gpus all ...` on a host with
# the NVIDIA driver and container toolkit.

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /dreamerv2

# Requirements first, so that code changes do not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

VOLUME /logdir
CMD ["python", "dreamerv2/train.py", "--logdir", "/logdir/atari_pong/dreamerv2/1", \
     "--configs", "defaults", "atari", "--task", "atari_pong"]
