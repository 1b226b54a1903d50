#!/bin/bash
# The veth experiment behind README "The veth path" (issue #13): one bulk TCP stream
# (iperf3) across veths in namespaces with XDP_PASS programs (plain and xdp.frags),
# generic XDP, and a tc program doing bpf_redirect_peer, loaded with raw bpf() calls
# (xdpprog.py, tcprog.py). Needs root, iproute2, ethtool, iperf3, python3.
# Everything lives in namespaces perfx-* and a private bpffs, removed on exit.
# Usage: [T=seconds] [ROUNDS=n] tests/experiments/veth/run.sh
set -u
D=$(cd "$(dirname "$0")" && pwd)
A=perfx-a; H=perfx-h; B=perfx-b; T=${T:-3}; ROUNDS=${ROUNDS:-3}
P=$(mktemp -d /tmp/veth-exp-bpffs.XXXXXX)
mount -t bpf bpf "$P" || exit 1
cleanup() {
  for n in $A $H $B; do ip netns pids $n 2>/dev/null | xargs -r kill 2>/dev/null; done
  sleep 0.2
  for n in $A $H $B; do ip netns del $n 2>/dev/null; done
  umount "$P" 2>/dev/null; rmdir "$P" 2>/dev/null
}
trap cleanup EXIT
python3 "$D/xdpprog.py" "$P/pass" >/dev/null || exit 1
python3 "$D/xdpprog.py" "$P/frags" frags >/dev/null || exit 1
feat() { ip netns exec $1 ethtool -k $2 | awk -F': ' '/^tcp-segmentation-offload:/{t=$2} /^generic-segmentation-offload:/{g=$2} /^generic-receive-offload:/{r=$2} END{printf "tso %s gso %s gro %s", t, g, r}'; }
# run LABEL SERVER_IP SENDER_NS SENDER_IF: one stream, the server sending (-R).
run() {
  local out
  out=$(ip netns exec $A iperf3 -c $2 -R -t $T -J 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' 2>/dev/null || echo FAIL)
  printf "%-52s %6s Gbit/s   sender %s\n" "$1" "$out" "$(feat $3 $4)"
}
# seg "NS IF on|off"...: TSO, GSO and GRO off, or back to veth defaults (GRO off).
seg() { for i in "$@"; do set -- $i; ip netns exec $1 ethtool -K $2 tso $3 gso $3 gro off >/dev/null 2>&1; done; }

echo "== 1: A -- B, one veth pair, stream B -> A, programs on the receiving end a0"
for n in $A $B; do ip netns add $n; ip -n $n link set lo up; done
ip link add a0 netns $A type veth peer name b0 netns $B
ip -n $A addr add 10.99.0.1/24 dev a0; ip -n $B addr add 10.99.0.2/24 dev b0
ip -n $A link set a0 up; ip -n $B link set b0 up
ip netns exec $B iperf3 -s -D >/dev/null 2>&1; sleep 0.3
for r in $(seq $ROUNDS); do
  echo "-- round $r (load $(cut -d' ' -f1-3 /proc/loadavg))"
  run "no XDP" 10.99.0.2 $B b0
  ip -n $A link set dev a0 xdpdrv pinned $P/pass; run "native XDP_PASS on a0" 10.99.0.2 $B b0; ip -n $A link set dev a0 xdpdrv off
  ip -n $A link set dev a0 xdpdrv pinned $P/frags; run "native xdp.frags XDP_PASS on a0" 10.99.0.2 $B b0; ip -n $A link set dev a0 xdpdrv off
  ip -n $A link set dev a0 xdpgeneric pinned $P/pass; run "generic XDP_PASS on a0" 10.99.0.2 $B b0; ip -n $A link set dev a0 xdpgeneric off
  seg "$A a0 off" "$B b0 off"; run "no XDP, TSO/GSO/GRO off" 10.99.0.2 $B b0; seg "$A a0 on" "$B b0 on"
done
cleanup; mount -t bpf bpf "$P" 2>/dev/null || { P=$(mktemp -d /tmp/veth-exp-bpffs.XXXXXX); mount -t bpf bpf "$P"; }
python3 "$D/xdpprog.py" "$P/pass" >/dev/null; python3 "$D/xdpprog.py" "$P/frags" frags >/dev/null

echo "== 2: A -- h0 [H] h1 -- B, stream B -> A"
for n in $A $H $B; do ip netns add $n; ip -n $n link set lo up; done
ip link add a0 netns $A type veth peer name h0 netns $H
ip link add b0 netns $B type veth peer name h1 netns $H
mac() { ip -n $1 -j link show $2 | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["address"])'; }
idx() { ip -n $1 -j link show $2 | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["ifindex"])'; }
H0MAC=$(mac $H h0); H1MAC=$(mac $H h1)
# Each end carries the MAC of the far side's H port, so a frame redirected to the peer
# unchanged is addressed to its receiver (what a balancer's rewrite would do).
ip -n $A link set a0 address $H1MAC; ip -n $B link set b0 address $H0MAC
ip -n $A addr add 10.99.1.2/24 dev a0; ip -n $H addr add 10.99.1.1/24 dev h0
ip -n $B addr add 10.99.2.2/24 dev b0; ip -n $H addr add 10.99.2.1/24 dev h1
for i in "$A a0" "$H h0" "$H h1" "$B b0"; do set -- $i; ip -n $1 link set $2 up; done
ip -n $A route add default via 10.99.1.1; ip -n $B route add default via 10.99.2.1
ip netns exec $H sysctl -qw net.ipv4.ip_forward=1
ip -n $A neigh replace 10.99.1.1 lladdr $H0MAC dev a0 nud permanent
ip -n $B neigh replace 10.99.2.1 lladdr $H1MAC dev b0 nud permanent
ip -n $H neigh replace 10.99.1.2 lladdr $H1MAC dev h0 nud permanent
ip -n $H neigh replace 10.99.2.2 lladdr $H0MAC dev h1 nud permanent
python3 "$D/tcprog.py" $P/rp0 $(idx $H h1) || exit 1   # on h0 ingress: to b0
python3 "$D/tcprog.py" $P/rp1 $(idx $H h0) || exit 1   # on h1 ingress: to a0
ip netns exec $B iperf3 -s -D >/dev/null 2>&1; sleep 0.3
xdp() { ip -n $H link set dev h0 $1 $2; ip -n $H link set dev h1 $1 $2; }
ALL="$A a0|$H h0|$H h1|$B b0"
for r in $(seq $ROUNDS); do
  echo "-- round $r (load $(cut -d' ' -f1-3 /proc/loadavg))"
  run "H routes, no BPF" 10.99.2.2 $B b0
  xdp xdpdrv "pinned $P/pass"; run "H routes, native XDP_PASS on h0+h1" 10.99.2.2 $B b0; xdp xdpdrv off
  xdp xdpdrv "pinned $P/frags"; run "H routes, native xdp.frags XDP_PASS on h0+h1" 10.99.2.2 $B b0; xdp xdpdrv off
  xdp xdpgeneric "pinned $P/pass"; run "H routes, generic XDP_PASS on h0+h1" 10.99.2.2 $B b0; xdp xdpgeneric off
  for i in h0 h1; do ip netns exec $H tc qdisc add dev $i clsact; done
  ip netns exec $H tc filter add dev h0 ingress bpf direct-action object-pinned $P/rp0
  ip netns exec $H tc filter add dev h1 ingress bpf direct-action object-pinned $P/rp1
  run "tc clsact bpf_redirect_peer on h0+h1" 10.99.2.2 $B b0
  for i in h0 h1; do ip netns exec $H tc qdisc del dev $i clsact; done
  seg "$A a0 off" "$H h0 off" "$H h1 off" "$B b0 off"
  run "H routes, no BPF, TSO/GSO/GRO off" 10.99.2.2 $B b0
  seg "$A a0 on" "$H h0 on" "$H h1 on" "$B b0 on"
done
