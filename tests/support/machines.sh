#!/usr/bin/env bash
# "Machines" for the cluster-launcher tests: network namespaces on a private bridge,
# each with its own address, host name, /root, /tmp, /srv and /dev/shm (a mount
# namespace), running its own sshd that lets root in with a key made for the test.
# Only /usr and the rest of the root filesystem are shared, as on hosts installed
# from one image. Needs root.
#
#   machines.sh up NAME COUNT SUBNET [IMAGE]  # machines are 10.SUBNET.0.11, .12, ...
#   machines.sh down NAME
#
# With IMAGE, each machine also runs its own Docker daemon (in its namespaces, data in
# its /srv, socket /tmp/docker.sock, DOCKER_HOST set in its ~/.profile) holding IMAGE,
# for Ray's container mode: `docker run --net=host` there shares the machine's network.
#
# `up` prints the machines' addresses, one per line; the key is
# /run/rayish-machines/NAME/id_ed25519. `down` kills everything left in the namespaces.
set -euo pipefail
cmd=$1 name=$2
base=/run/rayish-machines/$name

machine_down() {
    local ns=$1
    if ip netns list | grep -qw "$ns"; then
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    fi
}

case $cmd in
up)
    count=$3 subnet=$4
    [ "$(id -u)" = 0 ] || { echo "machines.sh: needs root (network namespaces)" >&2; exit 1; }
    mkdir -p "$base" /run/sshd
    [ -f "$base/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$base/id_ed25519"
    ssh-keygen -A >/dev/null
    br="${name}br"
    ip link show "$br" >/dev/null 2>&1 || {
        ip link add "$br" type bridge
        ip addr add "10.$subnet.0.1/24" dev "$br"
        ip link set "$br" up
    }
    # Docker sets the FORWARD policy to DROP, and with br_netfilter bridged packets go
    # through it: let the machines reach each other.
    if command -v iptables >/dev/null; then
        iptables -C FORWARD -i "$br" -o "$br" -j ACCEPT 2>/dev/null ||
            iptables -I FORWARD -i "$br" -o "$br" -j ACCEPT
    fi
    for i in $(seq 1 "$count"); do
        ns="$name-m$i" ip="10.$subnet.0.$((10 + i))" root="$base/m$i"
        machine_down "$ns"
        ip link del "${name}v$i" 2>/dev/null || true
        ip netns add "$ns"
        ip link add "${name}v$i" type veth peer name eth0 netns "$ns"
        ip link set "${name}v$i" master "$br" up
        ip -n "$ns" addr add "$ip/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        ip -n "$ns" route add default via "10.$subnet.0.1"
        rm -rf "$root"
        mkdir -p "$root/home/.ssh" "$root/tmp" "$root/srv"
        chmod 700 "$root/home" "$root/home/.ssh"
        chmod 1777 "$root/tmp"
        cp "$base/id_ed25519.pub" "$root/home/.ssh/authorized_keys"
        chmod 600 "$root/home/.ssh/authorized_keys"
        cat > "$base/sshd-m$i.conf" <<CONF
ListenAddress $ip
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $base/sshd-m$i.pid
AuthorizedKeysFile .ssh/authorized_keys
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
CONF
        # sshd reads its configuration before the mounts hide nothing it needs: $base
        # is under /run, which stays shared.
        # nsenter (not `ip netns exec`, which remounts /sys) keeps the host's cgroup
        # mounts, so a machine can run its own Docker daemon.
        unshare --mount --uts --propagation private nsenter --net="/run/netns/$ns" bash -c "
            hostname $name-m$i
            mount --bind $root/home /root
            mount --bind $root/tmp /tmp
            mount --bind $root/srv /srv
            mount -t tmpfs -o size=4g tmpfs /dev/shm
            exec /usr/sbin/sshd -f $base/sshd-m$i.conf -E $base/sshd-m$i.log
        "
    done
    image=${5:-}
    for i in $(seq 1 "$count"); do
        ip="10.$subnet.0.$((10 + i))"
        for _ in $(seq 1 100); do
            ssh -i "$base/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
                -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=2 \
                "root@$ip" true 2>/dev/null && break
            sleep 0.1
        done
        if [ -n "$image" ]; then
            ssh_m="ssh -i $base/id_ed25519 -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@$ip"
            $ssh_m 'mkdir -p /srv/docker && echo "{\"data-root\": \"/srv/docker\", \"storage-driver\": \"vfs\", \"iptables\": false, \"ip6tables\": false, \"bridge\": \"none\", \"exec-root\": \"/tmp/docker-exec\", \"pidfile\": \"/tmp/dockerd.pid\", \"hosts\": [\"unix:///tmp/docker.sock\"]}" > /srv/daemon.json && echo "export DOCKER_HOST=unix:///tmp/docker.sock" >> ~/.profile && (setsid nohup dockerd --config-file /srv/daemon.json > /tmp/dockerd.log 2>&1 &)'
            root="$base/m$i"
            for _ in $(seq 1 100); do
                DOCKER_HOST="unix://$root/tmp/docker.sock" docker info >/dev/null 2>&1 && break
                sleep 0.2
            done
            [ -f "$base/image.tar" ] || docker save -o "$base/image.tar" "$image"
            DOCKER_HOST="unix://$root/tmp/docker.sock" docker load -q -i "$base/image.tar" >/dev/null
        fi
        echo "$ip"
    done
    rm -f "$base/image.tar"
    ;;
down)
    for ns in $(ip netns list | awk '{print $1}' | grep "^$name-m" || true); do machine_down "$ns"; done
    for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^${name}v" || true); do
        ip link del "$link" 2>/dev/null || true
    done
    ip link del "${name}br" 2>/dev/null || true
    if command -v iptables >/dev/null; then
        while iptables -D FORWARD -i "${name}br" -o "${name}br" -j ACCEPT 2>/dev/null; do :; done
    fi
    rm -rf "$base"
    ;;
*)
    echo "usage: machines.sh up NAME COUNT SUBNET | down NAME" >&2
    exit 2
    ;;
esac
