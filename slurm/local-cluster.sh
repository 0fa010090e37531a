#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for the tests and for trying the
# templates locally. No systemd: munged, slurmctld and slurmd are started directly, as root; process tracking
# without cgroups (proctrack/linuxproc, task/none).
#
#   slurm/local-cluster.sh start    # install the packages if missing, write the config, start the daemons, wait
#   slurm/local-cluster.sh stop     # stop the daemons this script started
#   slurm/local-cluster.sh status   # sinfo
#
# State, logs and pid files live in $SELFSUP_SLURM_DIR (default /tmp/selfsup-slurm). The config is written to
# /etc/slurm/slurm.conf (where sbatch/srun look by default) unless a slurm.conf not written by this script is
# already there; then it stays in $SELFSUP_SLURM_DIR and you must `export SLURM_CONF=$SELFSUP_SLURM_DIR/slurm.conf`.
# One node, named after this host, partition `debug`; CPUs: at least 2 (declared even on a 1-core machine, so a
# 2-task job can run), or $SELFSUP_SLURM_CPUS.
set -euo pipefail

DIR=${SELFSUP_SLURM_DIR:-/tmp/selfsup-slurm}
# The node is named after this host: Lightning (and torch.distributed) connect to the first node of
# SLURM_NODELIST, so the node name must resolve.
NODE=$(hostname -s)
MARK="# written by selfsup slurm/local-cluster.sh"
TIMEOUT=${SELFSUP_SLURM_START_TIMEOUT:-60}   # seconds to wait for the node to come up

log() { echo "local-cluster: $*" >&2; }

conf_path() {
    if [[ ! -e /etc/slurm/slurm.conf ]] || grep -qF "$MARK" /etc/slurm/slurm.conf; then
        echo /etc/slurm/slurm.conf
    else
        echo "$DIR/slurm.conf"
    fi
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    [[ $(id -u) == 0 ]] || { log "slurm-wlm/munge missing and not root: apt-get install slurm-wlm munge"; exit 1; }
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq
    timeout 300 apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
    local cpus host conf
    cpus=${SELFSUP_SLURM_CPUS:-$(nproc)}
    (( cpus < 2 )) && cpus=2
    host=$(hostname -s)
    conf=$(conf_path)
    mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm
    cat >"$conf" <<EOF
$MARK (state in $DIR); stop with: slurm/local-cluster.sh stop
ClusterName=selfsup-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it may start again (default 120); backfill every 5 s
AuthInfo=cred_expire=10
SchedulerParameters=bf_interval=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    echo "$conf"
}

running() { [[ -f "$DIR/$1.pid" ]] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

start() {
    install_packages
    local conf
    conf=$(write_config)
    export SLURM_CONF=$conf
    if ! getent hosts "$NODE" >/dev/null; then
        log "adding $NODE to /etc/hosts (the node name must resolve)"
        echo "127.0.0.1 $NODE" >>/etc/hosts
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if [[ ! -f /etc/munge/munge.key ]]; then
        (umask 077; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none)
        chown munge:munge /etc/munge/munge.key
    fi
    if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "starting munged"
        runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid \
            || /usr/sbin/munged --force --pid-file=/run/munge/munged.pid
        cp /run/munge/munged.pid "$DIR/munged.pid" 2>/dev/null || true
    fi
    if ! running slurmctld; then
        log "starting slurmctld"
        /usr/sbin/slurmctld -f "$conf" -c   # -c: a fresh state (no jobs from an earlier cluster)
    fi
    if ! running slurmd; then
        log "starting slurmd -N $NODE"
        /usr/sbin/slurmd -f "$conf" -N "$NODE"
    fi
    local waited=0
    until sinfo -h -n "$NODE" -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; do
        if (( waited >= TIMEOUT )); then
            log "node $NODE not up after ${TIMEOUT}s; see $DIR/slurmctld.log and $DIR/slurmd.log"
            sinfo -N -l 2>&1 | sed 's/^/  /' >&2 || true
            exit 1
        fi
        # a node left down/drained by an earlier run of this script comes back
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        sleep 1; waited=$((waited + 1))
    done
    log "up: $(sinfo -h -o '%P %D %t %c' | head -1) (SLURM_CONF=$conf)"
}

stop() {
    local name
    for name in slurmd slurmctld; do
        if running "$name"; then
            log "stopping $name"
            kill "$(cat "$DIR/$name.pid")" || true
        fi
    done
    for name in slurmd slurmctld; do
        for _ in $(seq 20); do running "$name" || break; sleep 0.5; done
    done
    if [[ -f "$DIR/munged.pid" ]] && kill -0 "$(cat "$DIR/munged.pid")" 2>/dev/null; then
        log "stopping munged"
        kill "$(cat "$DIR/munged.pid")" || true
        rm -f "$DIR/munged.pid"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) SLURM_CONF=$(conf_path) sinfo ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
