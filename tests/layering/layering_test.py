#!/usr/bin/env python3
"""Checks that core/ keeps its layers: a file in core/<layer>/ includes only headers of the layers
below it (and its own), no core file includes the server, the client, the transfer code, protobuf
or gRPC, every folder under core/ is a declared layer with a README.md, and each layer's CMake
library links only the libraries of the layers it may include.

    layering_test.py [--root DIR]      # DIR defaults to the checkout this file is in
    layering_test.py --self-test       # also proves the checker fails on planted violations

Exit 0 when the tree is clean, 1 with one line per violation otherwise.
"""
import argparse
import os
import re
import shutil
import sys
import tempfile

# Layer -> the layers it may include. The one place the order is written down (core/CMakeLists.txt
# repeats it as a comment).
ALLOWED = {
    "base": set(),
    "io": {"base"},
    "tokenizer": {"base", "io"},
    "model": {"base", "io"},
    "lora": {"base", "io", "model"},
    "engine": {"base", "io", "tokenizer", "model", "lora"},
}
FORBIDDEN_PREFIXES = ("server/", "client/", "transfer/", "proto/", "tests/", "grpc", "google/protobuf")
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^">]+)[">]')
DEPS = re.compile(r"\bloraserve_([a-z_]+)\b")


def check(root):
    problems = []
    core = os.path.join(root, "core")
    for entry in sorted(os.listdir(core)):
        path = os.path.join(core, entry)
        if not os.path.isdir(path):
            continue
        if entry not in ALLOWED:
            problems.append(f"core/{entry}/: not a declared layer (add it to ALLOWED in {__file__})")
            continue
        if not os.path.isfile(os.path.join(path, "README.md")):
            problems.append(f"core/{entry}/: no README.md saying what it owns and may include")
    for layer, allowed in ALLOWED.items():
        folder = os.path.join(core, layer)
        if not os.path.isdir(folder):
            problems.append(f"core/{layer}/: missing")
            continue
        for dirpath, _, names in os.walk(folder):
            for name in sorted(names):
                if not name.endswith((".h", ".cc", ".cu", ".cuh")):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    for lineno, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        inc = m.group(1)
                        if inc.startswith(FORBIDDEN_PREFIXES):
                            problems.append(f"{rel}:{lineno}: core must not include {inc}")
                        elif inc.startswith("core/"):
                            parts = inc.split("/")
                            target = parts[1] if len(parts) > 2 else None
                            if target is None:
                                problems.append(f"{rel}:{lineno}: {inc} is outside every layer")
                            elif target != layer and target not in allowed:
                                problems.append(
                                    f"{rel}:{lineno}: layer '{layer}' includes {inc} of layer "
                                    f"'{target}' (it may include: {', '.join(sorted(allowed)) or 'nothing of ours'})")
        cmake = os.path.join(folder, "CMakeLists.txt")
        if os.path.isfile(cmake):
            with open(cmake, encoding="utf-8") as f:
                text = f.read()
            for dep in sorted(set(DEPS.findall(text))):
                if dep in ALLOWED and dep != layer and dep not in allowed:
                    problems.append(f"core/{layer}/CMakeLists.txt: links loraserve_{dep}, a layer it may not use")
                elif dep.startswith(layer + "_") and f"add_library(loraserve_{dep} " in text:
                    continue  # a library of the layer's own sources (e.g. its CUDA kernels)
                elif dep not in ALLOWED and dep != "core_library":
                    problems.append(f"core/{layer}/CMakeLists.txt: links loraserve_{dep}, which is not a core layer")
    return problems


def self_test(root):
    """Plants one violation of each kind in a copy of core/ and expects the checker to see it."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(root, "core"), os.path.join(tmp, "core"))
        if check(tmp):
            return ["self-test: the copy of core/ is not clean to begin with"]
        plants = [
            ("core/io/planted.h", '#include "core/engine/engine.h"\n', "layer 'io' includes"),
            ("core/model/planted.cc", '#include "server/server.h"\n', "must not include server/"),
            ("core/lora/planted.h", '#include "core/tokenizer/tokenizer.h"\n', "layer 'lora' includes"),
            ("core/planted/x.h", "\n", "not a declared layer"),
        ]
        missing = []
        for rel, text, expect in plants:
            path = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            if not any(expect in p for p in check(tmp)):
                missing.append(f"self-test: planting {rel} ({text.strip()}) went unnoticed")
            if rel.startswith("core/planted/"):
                shutil.rmtree(os.path.dirname(path))
            else:
                os.remove(path)
        with open(os.path.join(tmp, "core/io/CMakeLists.txt"), "a", encoding="utf-8") as f:
            f.write("target_link_libraries(loraserve_io PUBLIC loraserve_model)\n")
        if not any("links loraserve_model" in p for p in check(tmp)):
            missing.append("self-test: io linking loraserve_model went unnoticed")
        return missing


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    problems = check(args.root)
    if args.self_test:
        problems += self_test(args.root)
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"core/ layers clean: {', '.join(ALLOWED)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
