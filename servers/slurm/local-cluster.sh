#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying and testing `cdw serve --slurm` (the `slurm` test tier).
#
# Installs Debian's slurm-wlm and munge if they are missing, writes a single-node slurm.conf for this host (its
# name, cores and memory), creates the munge key, and starts munged, slurmctld and slurmd without systemd.
# Idempotent: when the cluster already answers and its node is idle, it only says so (well under a second).
#
#   sudo servers/slurm/local-cluster.sh           set up and start (or check) the cluster
#   sudo servers/slurm/local-cluster.sh --stop    stop the three daemons (the configuration stays)
#
# The node offers more CPUs than the machine has (CPUS, default 16, at least the real count): on this test
# cluster a CPU is a scheduling slot, not a core, so the tiny preset's three servers and an evaluation job run at
# once on a 2-core machine (the servers pin themselves to cores, see servers/presets.toml). Memory is not a
# consumable resource here, so jobs need no --mem. A real cluster's administrators configure all of this.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
CLUSTER=cdw-local
PARTITION=${PARTITION:-debug}
NODE=$(hostname -s)

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

say() { echo "local-cluster: $*"; }

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }

if [ "${1:-}" = "--stop" ]; then
    $SUDO pkill -x slurmd || true
    $SUDO pkill -x slurmctld || true
    $SUDO pkill -x munged || true
    say "stopped munged, slurmctld and slurmd"
    exit 0
fi

# Quick path: everything is up and the node takes jobs.
if command -v sinfo >/dev/null && [ -f "$CONF" ] && pgrep -x munged >/dev/null && pgrep -x slurmctld >/dev/null \
    && pgrep -x slurmd >/dev/null; then
    case "$(node_state)" in
        idle|mixed|allocated|completing)
            say "cluster $CLUSTER is up: node $NODE is $(node_state) (partition $PARTITION)"
            exit 0 ;;
    esac
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge (Debian packages)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: a key shared by every node (here, one), readable by the munge user only.
if [ ! -s /etc/munge/munge.key ]; then
    $SUDO mkdir -p /etc/munge
    $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
$SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
$SUDO chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
$SUDO chmod 0400 /etc/munge/munge.key
$SUDO chmod 0755 /run/munge

cpus=$(nproc)
want=${CPUS:-16}
[ "$want" -ge "$cpus" ] || want=$cpus
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)

conf=$(cat <<EOF
# Written by servers/slurm/local-cluster.sh: a one-node test cluster for the Collaborative Decoding Workspace.
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
# No cgroups: processes are tracked by their parents and not confined (containers often lack cgroup delegation).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to scontrol for 10 minutes: how cdw reports why a job ended.
MinJobAge=600
KillWait=30
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# The node offers CPU slots, not cores (see the top of local-cluster.sh); slurmd accepts the difference.
SlurmdParameters=config_overrides
NodeName=$NODE CPUs=$want RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
$SUDO mkdir -p "$CONF_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$conf" ]; then
    echo "$conf" | $SUDO tee "$CONF" >/dev/null
    say "wrote $CONF ($NODE: $want CPU slots on $cpus cores, ${mem_mb} MB)"
    # A changed configuration needs restarted daemons.
    $SUDO pkill -x slurmd || true
    $SUDO pkill -x slurmctld || true
    sleep 1
fi

pgrep -x munged >/dev/null || $SUDO runuser -u munge -- /usr/sbin/munged
pgrep -x slurmctld >/dev/null || $SUDO slurmctld
pgrep -x slurmd >/dev/null || $SUDO slurmd

# Wait for the node to register, and bring it back if an earlier run left it down or drained.
for _ in $(seq 1 60); do
    state=$(node_state || true)
    case "$state" in
        idle|mixed|allocated|completing)
            say "cluster $CLUSTER is up: node $NODE is $state (partition $PARTITION)"
            exit 0 ;;
        down*|drain*|fail*)
            $SUDO scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
say "the node did not become idle in 60 s; state: '$(node_state || true)'. Logs: /var/log/slurm/" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
