# loraserve image: Debian 12 with the same package list as CI (deploy/install-deps.sh).
FROM debian:12
WORKDIR /src
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN bash deploy/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN make build BUILD_DIR=/build CMAKE_FLAGS=-DLORASERVE_BUILD_BENCH=OFF
EXPOSE 50051
ENTRYPOINT ["/build/server/loraserve", "--listen=0.0.0.0:50051"]
