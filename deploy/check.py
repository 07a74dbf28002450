#!/usr/bin/env python3
"""Checks deploy/compose.yaml by parsing it (there is no container engine to run it here): PostgreSQL with the
required settings mounted, three nodes on one database with distinct names and the URLs the others reach them at,
a load balancer in front of all three. Run by .ci/run with PyYAML from tests/deploy/requirements.txt."""
import pathlib
import re
import sys

import yaml

here = pathlib.Path(__file__).resolve().parent
compose = yaml.safe_load((here / "compose.yaml").read_text())
problems = []
services = compose.get("services", {})
nodes = {name: s for name, s in services.items() if name.startswith("node")}
if len(nodes) != 3:
    problems.append(f"three nodes expected, found {sorted(nodes)}")
ids, urls = set(), set()
for name, s in nodes.items():
    env = s.get("environment", {})
    for var in ["MARKETFLOW_DATABASE_URL", "MARKETFLOW_CLUSTER_SECRET", "MARKETFLOW_NODE_ID", "MARKETFLOW_NODE_URL",
                "MARKETFLOW_LEASE", "MARKETFLOW_LISTEN", "MARKETFLOW_PUBLIC_URL", "MARKETFLOW_OPERATOR_TOKENS",
                "MARKETFLOW_SERVICE_TOKEN", "MARKETFLOW_ALIYUN_ISV_KEY", "MARKETFLOW_SMTP_URL"]:
        if var not in env:
            problems.append(f"{name}: {var} is not set")
    ids.add(env.get("MARKETFLOW_NODE_ID"))
    urls.add(env.get("MARKETFLOW_NODE_URL"))
    if not str(env.get("MARKETFLOW_NODE_URL", "")).startswith(f"http://{name}:"):
        problems.append(f"{name}: MARKETFLOW_NODE_URL must name the node itself, got {env.get('MARKETFLOW_NODE_URL')}")
    if "@postgres:5432/" not in str(env.get("MARKETFLOW_DATABASE_URL", "")):
        problems.append(f"{name}: the database URL does not point at the postgres service")
    if s.get("depends_on", {}).get("postgres", {}).get("condition") != "service_healthy":
        problems.append(f"{name}: must wait for a healthy postgres")
    if "readyz" not in " ".join(s.get("healthcheck", {}).get("test", [])):
        problems.append(f"{name}: the health check should ask /readyz")
if len(ids) != len(nodes) or len(urls) != len(nodes):
    problems.append(f"node names and URLs must be distinct: {ids} {urls}")
pg = services.get("postgres", {})
if not any("postgresql.conf" in v for v in pg.get("volumes", [])):
    problems.append("postgres: deploy/postgresql.conf is not mounted")
conf = (here / "postgresql.conf").read_text()
for setting, value in [("synchronous_commit", "on"), ("fsync", "on"), ("idle_in_transaction_session_timeout", None),
                       ("lock_timeout", None), ("autovacuum", "on")]:
    m = re.search(rf"^{setting}\s*=\s*(\S+)", conf, re.M)
    if not m or (value and m.group(1) != value):
        problems.append(f"postgresql.conf: {setting} must be set" + (f" to {value}" if value else ""))
lb = services.get("lb", {})
if set(lb.get("depends_on", [])) != set(nodes):
    problems.append(f"lb must front every node: {lb.get('depends_on')}")
nginx = (here / "nginx.conf").read_text()
for name in nodes:
    if f"server {name}:8080" not in nginx:
        problems.append(f"nginx.conf: {name} is not an upstream")
if problems:
    print("deploy/compose.yaml:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"deploy/compose.yaml: postgres, {len(nodes)} nodes, a load balancer: ok")
