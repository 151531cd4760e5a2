"""Validate infra/ and localstack/ manifests (they cannot run here: no Docker, no cluster).

Checks that every YAML file parses, the compose file wires 3 agents to MinIO + PostgreSQL
behind the load balancer, the Kubernetes objects agree on labels and ports, and every
FLOE_* variable the manifests set is one `floe serve` actually reads.
Usage: check_infra.py FLOE_BINARY REPO_ROOT
"""
import pathlib
import re
import subprocess
import sys

import yaml

floe, root = sys.argv[1], pathlib.Path(sys.argv[2])
help_text = subprocess.run([floe, "serve", "--help"], capture_output=True, text=True, check=True).stdout
known = set(re.findall(r"env: (FLOE_[A-Z_]+)", help_text))
assert "FLOE_BUCKET" in known and "FLOE_INDEX" in known, known
errors = []

def check_env(where, env):
    for k in env:
        if k.startswith("FLOE_") and k not in known:
            errors.append(f"{where}: {k} is not a floe serve setting")

compose = yaml.safe_load((root / "infra/docker-compose.yml").read_text())
svc = compose["services"]
for s in ["minio", "postgres", "agent1", "agent2", "agent3", "lb", "create-bucket"]:
    if s not in svc:
        errors.append(f"compose: service {s} missing")
for a in ["agent1", "agent2", "agent3"]:
    env = svc[a]["environment"]
    check_env(f"compose {a}", env)
    if not env["FLOE_BUCKET"].startswith("s3://") or not env["FLOE_INDEX"].startswith("postgres://"):
        errors.append(f"compose {a}: must use S3 + PostgreSQL")
    if env["AWS_ENDPOINT_URL"] != "http://minio:9000":
        errors.append(f"compose {a}: not pointed at minio")
ids = {svc[a]["environment"]["FLOE_AGENT_ID"] for a in ["agent1", "agent2", "agent3"]}
if len(ids) != 3:
    errors.append("compose: agent ids must differ")
nginx = (root / "infra/nginx.conf").read_text()
for a in ["agent1", "agent2", "agent3"]:
    if f"server {a}:7070" not in nginx:
        errors.append(f"nginx: {a} not in upstream")

docs = [d for d in yaml.safe_load_all((root / "infra/k8s/floe.yaml").read_text()) if d]
kinds = {d["kind"]: d for d in docs}
for k in ["ConfigMap", "Secret", "Deployment", "Service"]:
    if k not in kinds:
        errors.append(f"k8s: {k} missing")
dep, service = kinds["Deployment"], kinds["Service"]
labels = dep["spec"]["template"]["metadata"]["labels"]
if dep["spec"]["selector"]["matchLabels"] != labels or service["spec"]["selector"] != labels:
    errors.append("k8s: selectors do not match pod labels")
check_env("k8s configmap", kinds["ConfigMap"]["data"])
check_env("k8s secret", kinds["Secret"]["stringData"])
container = dep["spec"]["template"]["spec"]["containers"][0]
check_env("k8s container", [e["name"] for e in container["env"]])
port_names = {p["name"] for p in container["ports"]}
if service["spec"]["ports"][0]["targetPort"] not in port_names:
    errors.append("k8s: service targetPort is not a container port")
for probe in ["readinessProbe", "livenessProbe"]:
    if container[probe]["httpGet"]["path"] not in ("/readyz", "/healthz"):
        errors.append(f"k8s: {probe} path")

ls = yaml.safe_load((root / "localstack/docker-compose.yml").read_text())
if ls["services"]["localstack"]["environment"]["SERVICES"] != "s3":
    errors.append("localstack compose: SERVICES must be s3")

if errors:
    print("\n".join(errors))
    sys.exit(1)
print("infra ok:", len(docs), "k8s objects,", len(svc), "compose services")
