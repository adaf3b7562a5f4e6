# Shared by scripts/demo, scripts/test and bench/*: installs what dockgc's end-to-end work
# needs on a fresh Debian machine, and starts private Docker engines on loop-mounted disks.
# Never touches the machine's default engine.

set -euo pipefail

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$0: run as root (it installs packages and mounts a loop disk for a private dockerd)" >&2
    exit 2
  fi
}

# libfaketime (multi-threaded build): bench/replay runs docuum on the replay's simulated clock.
FAKETIME_LIB=/usr/lib/$(uname -m)-linux-gnu/faketime/libfaketimeMT.so.1

# dockgc's disk.high for a benchmark budget (its disk.low): the default gap of 5 points, at
# most 95 %. bench/replay and bench/compare's simulations must agree on it.
bench_high() { # BUDGET_PERCENT
  echo $(($1 + 5 > 95 ? 95 : $1 + 5))
}

# Debian packages: Docker engine and client, a static busybox for test containers.
install_packages() {
  local missing=()
  [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || missing+=(docker.io)
  command -v promtool >/dev/null && [ -x /usr/bin/prometheus ] || missing+=(prometheus)
  [ -x /usr/bin/busybox ] && file_is_static /usr/bin/busybox || missing+=(busybox-static)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  command -v curl >/dev/null || missing+=(curl)
  command -v bc >/dev/null || missing+=(bc)
  [ -e "$FAKETIME_LIB" ] || missing+=(libfaketime)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} ..." >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null; then
    echo "$0: cargo is missing: install a Rust toolchain (rustup) first" >&2
    exit 2
  fi
}

file_is_static() {
  ! ldd "$1" >/dev/null 2>&1
}

# start_engine DIR SIZE_MB: a dockerd with its data root on a fresh ext4 loop disk under DIR.
# Sets ENGINE_SOCK and ENGINE_ROOT. stop_engine DIR undoes it.
start_engine() {
  local dir=$1 size_mb=$2
  mkdir -p "$dir/root" "$dir/x"
  truncate -s "${size_mb}M" "$dir/disk.img"
  mkfs.ext4 -q -F "$dir/disk.img"
  mount -o loop "$dir/disk.img" "$dir/root"
  ENGINE_SOCK="$dir/d.sock"
  ENGINE_ROOT="$dir/root"
  /usr/sbin/dockerd --data-root "$dir/root" --exec-root "$dir/x" --pidfile "$dir/d.pid" \
    -H "unix://$ENGINE_SOCK" --bridge=none --iptables=false --ip-masq=false \
    >"$dir/dockerd.log" 2>&1 &
  local deadline=$((SECONDS + 60))
  until /usr/bin/docker -H "unix://$ENGINE_SOCK" version >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "private dockerd did not start; its log:" >&2
      tail -20 "$dir/dockerd.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

stop_engine() {
  local dir=$1
  if [ -f "$dir/d.pid" ]; then
    local pid
    pid=$(cat "$dir/d.pid")
    /usr/bin/docker -H "unix://$dir/d.sock" ps -q 2>/dev/null | xargs -r /usr/bin/docker -H "unix://$dir/d.sock" kill >/dev/null 2>&1 || true
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  umount "$dir/root" 2>/dev/null || umount -l "$dir/root" 2>/dev/null || true
  rm -rf "$dir"
}
