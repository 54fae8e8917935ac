# syntax=docker/dockerfile:1
# loraserve, CPU image (Debian's LibTorch). Two stages: the builder has the whole toolchain
# (deploy/install-deps.sh, the one package list CI uses); the runtime stage has only
# deploy/runtime-packages.txt, a non-root user, the installed binaries and the built-in model.
#   docker build -t loraserve .        (the CUDA image: deploy/Dockerfile.cuda)

FROM debian:12 AS builder
WORKDIR /src
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN bash deploy/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DLORASERVE_BUILD_TESTS=OFF \
      -DLORASERVE_BUILD_BENCH=OFF -DCMAKE_INSTALL_PREFIX=/opt/loraserve \
 && cmake --build /build -j"$(nproc)" \
 && cmake --install /build

FROM debian:12-slim AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY deploy/runtime-packages.txt /tmp/runtime-packages.txt
# hadolint ignore=DL3008
RUN apt-get update \
 && grep -v '^#' /tmp/runtime-packages.txt | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin loraserve \
 && mkdir -p /var/lib/loraserve/adapters /var/lib/loraserve/uploads /var/lib/loraserve/state \
 && chown -R loraserve:loraserve /var/lib/loraserve
COPY --from=builder /opt/loraserve /opt/loraserve
ENV PATH=/opt/loraserve/bin:$PATH
USER 10001:10001
EXPOSE 50051 9464
STOPSIGNAL SIGTERM
# grpc.health.v1 through the bundled CLI (exit 0 only when SERVING).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["loractl", "--addr", "127.0.0.1:50051", "--timeout", "2", "health"]
ENTRYPOINT ["loraserve", "--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464", \
            "--model=/opt/loraserve/share/loraserve/default-model", \
            "--adapter_root=/var/lib/loraserve/adapters", "--upload_dir=/var/lib/loraserve/uploads", \
            "--state_dir=/var/lib/loraserve/state"]
