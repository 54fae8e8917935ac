"""What the Kubernetes schemas cannot check in the rendered overlays and the Dockerfiles:
every server flag they pass exists (`loraserve --helpfull`), the grace period outlasts
--shutdown_grace, the probes are native gRPC health probes on the gRPC port, the security context
is non-root with a read-only root, the HPA's metric is the one the prometheus-adapter rule serves
and loraserve exports, the ServiceMonitor's port exists, and the GPU overlay asks for a GPU and
runs the CUDA image with --device=cuda --dtype=bfloat16.
    check_manifests.py --loraserve BIN CPU.yaml GPU.yaml Dockerfile Dockerfile.cuda"""
import argparse
import json
import re
import subprocess
import sys

import yaml

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL: " + what)


def seconds(duration):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)] if m else None


def objects(path):
    with open(path) as f:
        return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(f) if d}


def flag_names(text):
    return re.findall(r"--([a-z_]+)=", text)


def check_overlay(name, objs, known_flags, gpu):
    dep = objs[("StatefulSet", "loraserve")]
    check(dep["spec"]["serviceName"] in [n for (k, n) in objs if k == "Service"] and
          objs[("Service", dep["spec"]["serviceName"])]["spec"].get("clusterIP") == "None",
          f"{name}: the StatefulSet's serviceName is not the headless Service")
    claims = {t["metadata"]["name"] for t in dep["spec"].get("volumeClaimTemplates", [])}
    check("state" in claims, f"{name}: no per-replica PersistentVolumeClaim for --state_dir")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    flags = objs[("ConfigMap", "loraserve-flags")]["data"]["loraserve.flags"]
    for f in flag_names(flags):
        check(f in known_flags, f"{name}: --{f} in the ConfigMap is not a loraserve flag")
    check(c["command"] == ["loraserve", "--flagfile=/etc/loraserve/loraserve.flags"], f"{name}: command")
    grace = seconds(re.search(r"--shutdown_grace=(\S+)", flags).group(1))
    check(pod["terminationGracePeriodSeconds"] > grace,
          f"{name}: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= --shutdown_grace {grace}")
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    check(re.search(rf"--listen=0\.0\.0\.0:{grpc_port}\b", flags) is not None, f"{name}: --listen vs the grpc port")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check(c[probe].get("grpc", {}).get("port") == grpc_port, f"{name}: {probe} is not a gRPC probe on {grpc_port}")
    start = c["startupProbe"]
    check(start["periodSeconds"] * start["failureThreshold"] >= 300, f"{name}: startup probe allows < 5 min to load")
    sc, psc = c["securityContext"], pod["securityContext"]
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, f"{name}: not non-root")
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False,
          f"{name}: root filesystem writable or privilege escalation allowed")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    for path in ("/tmp", "/var/lib/loraserve/uploads", "/var/lib/loraserve/adapters", "/var/lib/loraserve/state"):
        check(path in mounts, f"{name}: {path} is not a volume (the root filesystem is read-only)")
    volumes = {v["name"] for v in pod["volumes"]} | claims
    for m in c["volumeMounts"]:
        check(m["name"] in volumes, f"{name}: volume mount {m['name']} has no volume or claim")
    check("--state_dir=/var/lib/loraserve/state" in flags, f"{name}: --state_dir is not the state volume")
    hpa = objs[("HorizontalPodAutoscaler", "loraserve")]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = objs[("ConfigMap", "loraserve-prometheus-adapter-rules")]["data"]["config.yaml"]
    check(metric in rules, f"{name}: the HPA metric {metric} has no prometheus-adapter rule")
    svc_ports = {p["name"] for p in objs[("Service", "loraserve")]["spec"]["ports"]}
    for ep in objs[("ServiceMonitor", "loraserve")]["spec"]["endpoints"]:
        check(ep["port"] in svc_ports, f"{name}: ServiceMonitor port {ep['port']} not on the Service")
    check(objs[("PodDisruptionBudget", "loraserve")]["spec"]["minAvailable"] < dep["spec"]["replicas"],
          f"{name}: the PodDisruptionBudget blocks every eviction")
    # The router: its Envoy config hashes the header the clients send, over the headless Service,
    # and its pods are admitted by the replicas' NetworkPolicy.
    envoy_cm = next(d for (k, n), d in objs.items() if k == "ConfigMap" and n.startswith("loraserve-envoy"))
    envoy_cfg = yaml.safe_load(envoy_cm["data"]["envoy.yaml"])
    cluster = envoy_cfg["static_resources"]["clusters"][0]
    target = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    check(("Service", target["address"]) in objs and objs[("Service", target["address"])]["spec"].get("clusterIP") == "None",
          f"{name}: Envoy's cluster {target['address']} is not the headless Service")
    check(target["port_value"] == grpc_port, f"{name}: Envoy targets port {target['port_value']}")
    route = envoy_cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hashed = route["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["hash_policy"][0]["header"]["header_name"]
    check(hashed == "x-loraserve-adapter" and cluster["lb_policy"] in ("MAGLEV", "RING_HASH"), f"{name}: Envoy hashing")
    router = objs[("Deployment", "loraserve-router")]["spec"]["template"]
    check(router["metadata"]["labels"].get("loraserve-client") == "true", f"{name}: the router is not admitted")
    check(any(v.get("configMap", {}).get("name") == envoy_cm["metadata"]["name"] for v in router["spec"]["volumes"]),
          f"{name}: the router does not mount the Envoy config")
    limits = c["resources"]["limits"]
    if gpu:
        check(limits.get("nvidia.com/gpu") == "1", f"{name}: no nvidia.com/gpu limit")
        check("--device=cuda" in flags and "--dtype=bfloat16" in flags, f"{name}: not --device=cuda --dtype=bfloat16")
        check(c["image"].startswith("loraserve-cuda"), f"{name}: image {c['image']} is not the CUDA image")
        check(pod.get("nodeSelector") and pod.get("tolerations"), f"{name}: no node selector / tolerations")
    else:
        check("nvidia.com/gpu" not in limits and "--device=cpu" in flags, f"{name}: CPU overlay asks for a GPU")
    return metric


def check_dashboard(objs):
    """The Grafana dashboard (a ConfigMap of the base): valid JSON whose every PromQL expression uses
    only metrics loraserve exports, grouped only by labels they carry or Prometheus adds."""
    cm = next(d for (k, n), d in objs.items() if k == "ConfigMap" and n.startswith("loraserve-grafana-dashboard"))
    check(cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1", "the dashboard ConfigMap lacks grafana_dashboard=1")
    dash = json.loads(cm["data"]["loraserve.json"])
    source = open("server/metrics.cc").read()
    exported = set(re.findall(r'"(loraserve_[a-z_]+)"', source))
    labels = set(re.findall(r'\{"([a-z_]+)", ', source)) | {"le", "pod", "namespace", "instance", "job"}
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    check(len(exprs) >= 10, "the dashboard has fewer than 10 queries")
    for e in exprs:
        for m in re.findall(r"loraserve_[a-z_]+", e):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            check(m in exported or base in exported, f"dashboard: {m} is not a loraserve metric ({e})")
        for group in re.findall(r"by \(([^)]*)\)", e):
            for label in (l.strip() for l in group.split(",")):
                check(label in labels, f"dashboard: label {label} is not on loraserve's metrics ({e})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loraserve", required=True)
    ap.add_argument("cpu")
    ap.add_argument("gpu")
    ap.add_argument("dockerfiles", nargs="+")
    args = ap.parse_args()
    helpfull = subprocess.run([args.loraserve, "--helpfull"], capture_output=True, text=True).stdout
    known = set(re.findall(r"^\s+--([a-z_]+) ", helpfull, re.M))
    check("shutdown_grace" in known and "listen" in known, "could not read the server's flags")
    metric = None
    for name, path, gpu in (("cpu", args.cpu, False), ("gpu", args.gpu, True)):
        metric = check_overlay(name, objects(path), known, gpu)
    check_dashboard(objects(args.cpu))
    exported = subprocess.run(["grep", "-rh", f'"{metric}"', "server/"], capture_output=True, text=True).stdout
    check(metric in exported, f"loraserve does not export {metric}")
    for path in args.dockerfiles:
        text = open(path).read()
        entry = re.search(r"^ENTRYPOINT \[(.*?)\]", text, re.M | re.S)
        check(entry is not None and entry.group(1).lstrip().startswith('"loraserve"'), f"{path}: ENTRYPOINT")
        for f in flag_names(entry.group(1) if entry else ""):
            check(f in known, f"{path}: --{f} is not a loraserve flag")
        check("STOPSIGNAL SIGTERM" in text and "HEALTHCHECK" in text and re.search(r"^USER \d+", text, re.M),
              f"{path}: STOPSIGNAL, HEALTHCHECK or a non-root USER missing")
    print(f"check_manifests: {'FAILED' if FAILURES else 'passed'}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
