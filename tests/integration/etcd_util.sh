#!/usr/bin/env bash
# etcd_util.sh: start/stop a throwaway etcd on free loopback ports for tests.
#   etcd_util.sh start DIR   start etcd; DIR gets pid, client_url, client_addr (host:port), data/, etcd.log.
#                            When DIR already holds ports and data (a previous start), they are reused,
#                            so "kill" then "start" is a restart on the same data dir and port.
#   etcd_util.sh stop DIR    SIGTERM the etcd started in DIR (by its PID) and wait for it to exit.
#   etcd_util.sh kill DIR    SIGKILL it (a crash) and wait.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start|stop|kill DIR" >&2
  exit 2
fi
ETCD=${ETCD:-etcd}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_gone() {
  local pid=$1
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
  echo "etcd_util: etcd pid $pid did not exit" >&2
  return 1
}

case "$cmd" in
  start)
    command -v "$ETCD" >/dev/null || { echo "etcd_util: no etcd binary ($ETCD)" >&2; exit 3; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ -s "$dir/client_port" ]] || free_port >"$dir/client_port"
    [[ -s "$dir/peer_port" ]] || free_port >"$dir/peer_port"
    cport=$(cat "$dir/client_port")
    pport=$(cat "$dir/peer_port")
    curl_url="http://127.0.0.1:$cport"
    peer_url="http://127.0.0.1:$pport"
    echo "$curl_url" >"$dir/client_url"
    echo "127.0.0.1:$cport" >"$dir/client_addr"
    "$ETCD" --name t --data-dir "$dir/data" \
      --listen-client-urls "$curl_url" --advertise-client-urls "$curl_url" \
      --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
      --initial-cluster "t=$peer_url" --logger=zap --log-outputs "$dir/etcd.log" \
      </dev/null >>"$dir/etcd.out" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/pid"
    for _ in $(seq 1 100); do
      if curl -sf "$curl_url/health" 2>/dev/null | grep -q '"health":"true"'; then
        exit 0
      fi
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "etcd_util: etcd exited at start; see $dir/etcd.log" >&2
        exit 1
      fi
      sleep 0.1
    done
    echo "etcd_util: etcd not healthy after 10 s; see $dir/etcd.log" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
  stop | kill)
    [[ -s "$dir/pid" ]] || exit 0
    pid=$(cat "$dir/pid")
    sig=TERM
    [[ "$cmd" == kill ]] && sig=KILL
    kill -s "$sig" "$pid" 2>/dev/null || true
    wait_gone "$pid"
    rm -f "$dir/pid"
    ;;
  *)
    echo "usage: $0 start|stop|kill DIR" >&2
    exit 2
    ;;
esac
