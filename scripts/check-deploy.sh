#!/usr/bin/env bash
# Checks the deployment files (docker-compose.yml, Dockerfile, deploy/) with real parsers:
#   - docker-compose.yml: YAML; every service has an image or a build; every host path it mounts
#     exists; depends_on and named volumes refer to things that are declared;
#   - Grafana: provisioning YAML, dashboard JSON (in sync with deploy/grafana/generate_dashboard.py),
#     every panel target has an expr, and every expr is valid PromQL (promtool, via a rules file);
#   - every churnguard_* metric used by the dashboard and the alerts is defined in src/telemetry.rs;
#   - promtool check config / check rules / test rules for deploy/prometheus;
#   - churnguard config check deploy/churnguard.toml, if target/release/churnguard is built.
# Needs python3 (PyYAML is installed with pip if missing) and promtool. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PROMTOOL=${PROMTOOL:-$(command -v promtool || true)}
[ -n "$PROMTOOL" ] || { echo "error: promtool not found (Debian: apt-get install prometheus)" >&2; exit 1; }
if ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install --quiet pyyaml
fi

# The real Compose parser and schema validator: docker-compose 1.29 (Python), in a private venv.
# It declares PyYAML<6, which no longer builds on current Python; PyYAML 6 works with it.
compose_venv=.cache/compose-venv
if [ ! -x "$compose_venv/bin/docker-compose" ]; then
    python3 -m venv "$compose_venv"
    "$compose_venv/bin/pip" install --quiet "PyYAML==6.0.1" docopt "jsonschema<4" "python-dotenv<1" texttable \
        requests "websocket-client<1" "docker<7" distro dockerpty
    "$compose_venv/bin/pip" install --quiet --no-deps docker-compose==1.29.2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
step() { echo "== $*"; }

step "docker-compose.yml: docker-compose config (schema, interpolation, references)"
"$compose_venv/bin/docker-compose" -f docker-compose.yml config -q || failed=1

step "docker-compose.yml, Grafana provisioning and dashboard"
python3 - "$tmp" <<'PY' || failed=1
import json, os, re, subprocess, sys
import yaml

tmp = sys.argv[1]
errors = []

def err(msg):
    errors.append(msg)
    print(f"FAIL: {msg}")

# ---- docker-compose.yml
compose = yaml.safe_load(open("docker-compose.yml"))
services = compose.get("services") or {}
if not services:
    err("docker-compose.yml: no services")
named_volumes = set((compose.get("volumes") or {}).keys())
for name, svc in services.items():
    if "image" not in svc and "build" not in svc:
        err(f"service {name}: neither image nor build")
    build = svc.get("build")
    if build is not None:
        ctx = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if not os.path.isfile(os.path.join(ctx, dockerfile)):
            err(f"service {name}: build {ctx}/{dockerfile} does not exist")
    deps = svc.get("depends_on") or []
    for dep in (deps if isinstance(deps, list) else deps.keys()):
        if dep not in services:
            err(f"service {name}: depends_on unknown service {dep}")
    for v in svc.get("volumes") or []:
        src = v.get("source") if isinstance(v, dict) else v.split(":", 1)[0]
        if isinstance(v, dict) and v.get("type") not in (None, "bind", "volume"):
            continue
        if src.startswith((".", "/", "~")):
            if not os.path.exists(os.path.expanduser(src)):
                err(f"service {name}: mounted host path {src} does not exist")
            else:
                print(f"ok: {name} mounts {src}")
        elif ":" in (v if isinstance(v, str) else "x:") and src not in named_volumes:
            err(f"service {name}: named volume {src} is not declared under top-level volumes")
print(f"ok: {len(services)} services: {', '.join(services)}")

# ---- Grafana provisioning
ds = yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yml"))
uids = [d.get("uid") for d in ds.get("datasources", [])]
if "prometheus" not in uids:
    err("Grafana datasource with uid prometheus is missing")
prov = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/churnguard.yml"))
paths = [p.get("options", {}).get("path") for p in prov.get("providers", [])]
if "/var/lib/grafana/dashboards" not in paths:
    err("dashboard provider does not point at /var/lib/grafana/dashboards")

# ---- dashboard
dash_path = "deploy/grafana/dashboards/churnguard.json"
dash = json.load(open(dash_path))
if dash.get("schemaVersion") != 39:
    err(f"dashboard schemaVersion is {dash.get('schemaVersion')}, expected 39")
var_names = {v["name"] for v in dash.get("templating", {}).get("list", [])}
for v in ("instance", "topic"):
    if v not in var_names:
        err(f"dashboard variable ${v} missing")
gen = os.path.join(tmp, "generated.json")
subprocess.run([sys.executable, "deploy/grafana/generate_dashboard.py", gen], check=True, stdout=subprocess.DEVNULL)
if open(gen).read() != open(dash_path).read():
    err(f"{dash_path} is out of date: run python3 deploy/grafana/generate_dashboard.py")

exprs = []
def walk(panels):
    for p in panels:
        if p.get("type") == "row":
            walk(p.get("panels", []))
            continue
        if (p.get("datasource") or {}).get("uid") != "prometheus":
            err(f"panel {p.get('title')!r}: datasource uid is not prometheus")
        targets = p.get("targets") or []
        if not targets:
            err(f"panel {p.get('title')!r}: no targets")
        for t in targets:
            e = (t.get("expr") or "").strip()
            if not e:
                err(f"panel {p.get('title')!r} target {t.get('refId')}: no expr")
            else:
                exprs.append((p.get("title"), e))
walk(dash.get("panels", []))
print(f"ok: dashboard has {len(exprs)} expressions")

# Grafana variables -> concrete values, so promtool can parse the expressions.
def concrete(e):
    return (e.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$__interval", "15s")
             .replace("$instance", ".*").replace("$topic", ".*"))
rules = {"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard:expr_{i}", "expr": concrete(e)} for i, (_, e) in enumerate(exprs)]}]}
with open(os.path.join(tmp, "dashboard_rules.yml"), "w") as f:
    yaml.safe_dump(rules, f, sort_keys=False)

# ---- metric names used vs defined in src/telemetry.rs
defined = set(re.findall(r'"(churnguard_[a-z0-9_]+)"', open("src/telemetry.rs").read()))
known = set(defined)
for m in defined:
    known |= {m + "_bucket", m + "_sum", m + "_count"}
alerts = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
used = {}
for src, e in exprs + [(r["alert"], r["expr"]) for g in alerts["groups"] for r in g["rules"]]:
    for m in re.findall(r"\bchurnguard_[a-z0-9_]+", e):
        used.setdefault(m, src)
for m, src in sorted(used.items()):
    if m not in known:
        err(f"{src!r} uses {m}, which src/telemetry.rs does not define")
print(f"ok: {len(used)} metric names used, all defined in src/telemetry.rs" if all(m in known for m in used) else "")

sys.exit(1 if errors else 0)
PY

step "PromQL of every dashboard expression (promtool check rules)"
"$PROMTOOL" check rules "$tmp/dashboard_rules.yml" || failed=1

step "promtool check config deploy/prometheus/prometheus.yml"
"$PROMTOOL" check config deploy/prometheus/prometheus.yml || failed=1

step "promtool check rules deploy/prometheus/alerts.yml"
"$PROMTOOL" check rules deploy/prometheus/alerts.yml || failed=1

step "promtool test rules deploy/prometheus/alerts_test.yml"
"$PROMTOOL" test rules deploy/prometheus/alerts_test.yml || failed=1

step "churnguard config check deploy/churnguard.toml"
if [ -x target/release/churnguard ]; then
    if target/release/churnguard config check deploy/churnguard.toml >/dev/null 2>"$tmp/config.err"; then
        echo "ok"
    else
        cat "$tmp/config.err" >&2
        failed=1
    fi
else
    echo "skipped: target/release/churnguard is not built"
fi

if [ "$failed" -ne 0 ]; then
    echo "check-deploy: FAILED" >&2
    exit 1
fi
echo "check-deploy: all checks passed"
