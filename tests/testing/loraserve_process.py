"""The real `loraserve` binary as a child process, for the Python end-to-end tests."""

import hashlib
import os
import signal
import subprocess
import sys
import time


def generate_stubs(proto_dir, work):
    """protoc + Debian's grpc_python_plugin: loraserve.v1 Python stubs under <work>/gen, importable."""
    gen = os.path.join(work, "gen")
    os.makedirs(gen, exist_ok=True)
    protos = ["loraserve/v1/files.proto", "loraserve/v1/adapter_service.proto",
              "loraserve/v1/inference_service.proto"]
    subprocess.run(["protoc", "-I", proto_dir, "--python_out=" + gen, "--grpc_out=" + gen,
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin"] + protos, check=True)
    sys.path.insert(0, gen)


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_files(directory):
    """A PEFT adapter directory's two files as {name: bytes} (what UploadAdapter sends)."""
    out = {}
    for f in ADAPTER_FILES:
        with open(os.path.join(directory, f), "rb") as fh:
            out[f] = fh.read()
    return out


def upload_requests(pb, files_pb, name, files, chunk_bytes):
    """UploadAdapter's request stream for `files` ({path: bytes}): the name and total size, then
    each file in chunks of `chunk_bytes`, its last chunk with eof, size and SHA-256."""
    yield pb.UploadAdapterRequest(name=name, total_bytes=sum(len(d) for d in files.values()))
    for path, data in sorted(files.items()):
        for off in range(0, max(len(data), 1), chunk_bytes):
            eof = off + chunk_bytes >= len(data)
            chunk = files_pb.FileChunk(path=path, offset=off, data=data[off:off + chunk_bytes], eof=eof)
            if eof:
                chunk.size = len(data)
                chunk.sha256 = hashlib.sha256(data).hexdigest()
            yield pb.UploadAdapterRequest(chunk=chunk)


class LoraserveProcess:
    """loraserve on free ports (gRPC and /metrics), logging to <workdir>/<name>.log.

    Start-up failures raise `failure` (the caller's exception type) with the server's log;
    stop() sends SIGTERM and returns the exit status.
    """

    def __init__(self, binary, model, adapter_root, workdir, name="server", extra=(),
                 failure=RuntimeError):
        self.failure = failure
        self.log_path = os.path.join(workdir, f"{name}.log")
        port_file = os.path.join(workdir, f"{name}.port")
        metrics_port_file = os.path.join(workdir, f"{name}.metrics_port")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, "--model=" + model, "--adapter_root=" + adapter_root, "--listen=127.0.0.1:0",
             "--port_file=" + port_file, "--metrics_listen=127.0.0.1:0",
             "--metrics_port_file=" + metrics_port_file, "--threads=1", "--max_wait=1ms", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and os.path.exists(metrics_port_file)):
            if self.proc.poll() is not None or time.time() > deadline:
                raise failure(f"loraserve ({name}) did not start:\n" + self.logs())
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read().strip())
        with open(metrics_port_file) as f:
            self.metrics_port = int(f.read().strip())
        self.addr = f"127.0.0.1:{self.port}"
        self.metrics_addr = f"127.0.0.1:{self.metrics_port}"

    def logs(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise self.failure("loraserve did not exit within 30 s of SIGTERM")
        return self.proc.returncode
