"""Generates the gRPC stubs from the repository's proto/ (into src/loraserve/v1/, git-ignored)
before setuptools collects the packages: they are never committed."""
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTOS = ["loraserve/v1/files.proto", "loraserve/v1/adapter_service.proto",
          "loraserve/v1/inference_service.proto"]


def generate_stubs():
    from grpc_tools import protoc  # a build requirement (pyproject.toml)
    out = os.path.join(HERE, "src")
    os.makedirs(os.path.join(out, "loraserve", "v1"), exist_ok=True)
    for proto in PROTOS:
        if protoc.main(["protoc", "-I" + PROTO_DIR, "--python_out=" + out, "--grpc_python_out=" + out, proto]) != 0:
            raise RuntimeError(f"protoc failed on {proto} (proto dir {PROTO_DIR})")
    open(os.path.join(out, "loraserve", "v1", "__init__.py"), "a").close()


if os.path.isdir(PROTO_DIR):  # building from the repository (an sdist carries the generated stubs)
    generate_stubs()
setup()
