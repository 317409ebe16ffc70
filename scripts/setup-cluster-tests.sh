#!/usr/bin/env bash
# Installs what the cluster-launcher tests need, idempotently: an ssh server and client
# (the test machines are network namespaces each running its own sshd), rsync (how
# `rayish up` copies file mounts, as Ray's launcher does) and iproute2 (`ip netns`).
set -euo pipefail
need_pkgs=()
for p in openssh-server openssh-client rsync iproute2; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "setup-cluster-tests: installing ${need_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
