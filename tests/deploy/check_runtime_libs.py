"""Every shared library that `ldd` lists for the given binaries must come from a package the
runtime image installs: deploy/runtime-packages.txt, the packages of debian:12-slim (priority
required/important), and everything they depend on, as dpkg records it on this (Debian 12) machine.
    check_runtime_libs.py RUNTIME_PACKAGES.txt BINARY..."""
import os
import re
import subprocess
import sys


def installed():
    """package -> (depends names, provides names) for every installed package."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Status}\t${Priority}\t${Depends}, ${Pre-Depends}\t${Provides}\n"],
                         capture_output=True, text=True, check=True).stdout
    pkgs, provides, base = {}, {}, set()
    for line in out.splitlines():
        name, status, priority, deps, prov = line.split("\t")
        if not status.endswith(" installed"):
            continue
        alternatives = [[re.sub(r"[\s(:].*", "", a.strip()) for a in d.split("|")] for d in deps.split(",") if d.strip()]
        pkgs[name] = alternatives
        for p in prov.split(","):
            if p.strip():
                provides.setdefault(re.sub(r"[\s(:].*", "", p.strip()), []).append(name)
        if priority in ("required", "important"):
            base.add(name)
    return pkgs, provides, base


def file_owners():
    """path -> package, from dpkg's file lists (what `dpkg -S` reads; one pass instead of one
    dpkg run per library). /lib and /usr/lib are the same directory on Debian 12 (merged /usr)."""
    owners = {}
    info = "/var/lib/dpkg/info"
    for name in os.listdir(info):
        if name.endswith(".list"):
            with open(os.path.join(info, name), errors="replace") as f:
                for path in f:
                    owners.setdefault(path.rstrip("\n"), name[:-5].split(":")[0])
    return owners


def closure(roots, pkgs, provides):
    seen, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in seen or p not in pkgs:
            for real in provides.get(p, []):
                if real not in seen:
                    todo.append(real)
            continue
        seen.add(p)
        for alternatives in pkgs[p]:
            present = [a for a in alternatives if a in pkgs or a in provides]
            todo.extend(present[:1])
    return seen


def main():
    wanted = [l.strip() for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
    pkgs, provides, base = installed()
    missing = [p for p in wanted if p not in pkgs]
    if missing:
        print(f"check_runtime_libs: FAILED: listed but not installed here: {missing}")
        return 1
    have = closure(wanted + sorted(base), pkgs, provides)
    bad = []
    libs = set()
    for binary in sys.argv[2:]:
        for line in subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout.splitlines():
            m = re.search(r"=> (/\S+)", line)
            # Sanitizer runtimes (make test-asan / test-tsan builds) never ship in an image.
            if m and not re.search(r"/lib(asan|ubsan|tsan|lsan)\.so", m.group(1)):
                libs.add(m.group(1))
    owners = file_owners()
    for lib in sorted(libs):
        owner = None
        for path in (lib, os.path.realpath(lib), "/usr" + lib, os.path.realpath(lib).replace("/usr/", "/", 1)):
            if path in owners:
                owner = owners[path]
                break
        if owner is None or owner not in have:
            bad.append(f"{lib} ({owner or 'no package'})")
    for b in bad:
        print(f"check_runtime_libs: not in the runtime image: {b}")
    print(f"check_runtime_libs: {len(libs)} libraries of {len(sys.argv) - 2} binaries, "
          f"{len(have)} packages in the runtime closure: {'FAILED' if bad else 'passed'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
