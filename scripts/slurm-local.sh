#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the sweep tests and for trying
# `ehrfm sweep launch --executor slurm` without a cluster.
#
#   bash scripts/slurm-local.sh install   # apt-get install slurm-wlm + munge (idempotent, as root)
#   bash scripts/slurm-local.sh up        # write slurm.conf + munge key, start munged/slurmctld/slurmd
#   bash scripts/slurm-local.sh down      # stop them
#   bash scripts/slurm-local.sh status    # sinfo
#
# One node (this host, its real cores and memory) in one partition `local`. All state lives
# under $SLURM_LOCAL_STATE (default /var/tmp/ehrfm-slurm), never in the repository. Runs as
# root: slurmd must be able to start jobs as the submitting user.
set -euo pipefail

STATE=${SLURM_LOCAL_STATE:-/var/tmp/ehrfm-slurm}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
PARTITION=${SLURM_LOCAL_PARTITION:-local}

die() { echo "slurm-local: error: $*" >&2; exit 2; }
need_root() { [ "$(id -u)" = 0 ] || die "'$1' must run as root (it installs packages / starts daemons)"; }

cmd_install() {
  need_root install
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
     && command -v sbatch >/dev/null; then
    echo "slurm-local: slurm-wlm and munge already installed ($(slurmd -V 2>/dev/null))"
    return 0
  fi
  command -v apt-get >/dev/null || die "apt-get not found: install slurm-wlm and munge with your package manager"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  echo "slurm-local: installed $(slurmd -V)"
}

write_conf() {
  local host cpus mem_mb
  host=$(hostname -s)
  # This node's real CPUs and memory (RealMemory a little under the total: slurmd drains a node
  # that reports less memory than configured). Addresses pinned to loopback: a container's
  # hostname may not resolve.
  cpus=$(nproc --all)
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)
  # Never replace a slurm.conf this script did not write (a real cluster's node, or the admin's).
  if [ -s "$CONF" ] && ! head -1 "$CONF" | grep -q "^# Written by ehrfm scripts/slurm-local.sh"; then
    die "$CONF exists and was not written by this script (a real cluster's?): refusing to replace it; on a cluster use its own SLURM"
  fi
  mkdir -p "$CONF_DIR" "$STATE"/{ctld,d,log,run}
  cat >"$CONF" <<EOF
# Written by ehrfm scripts/slurm-local.sh: a single-node cluster on $host.
ClusterName=ehrfm-local
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmdSpoolDir=$STATE/d
StateSaveLocation=$STATE/ctld
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmUser=root
SlurmdUser=root
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Jobs may be requeued (submitit requeues on preemption/timeout; tests use scontrol requeue).
JobRequeue=1
# Fast turnaround for a test cluster; KillWait (SIGTERM -> SIGKILL) long enough for a trainer on
# a loaded machine to write its checkpoint after scontrol requeue or a time limit.
MinJobAge=300
KillWait=120
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
# A busy slurmctld on a loaded 2-core machine answers squeue/sbatch late: the default 10 s made
# clients fail with "Socket timed out" now and then.
MessageTimeout=60
Waittime=0
MaxArraySize=10001
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO DefMemPerCPU=$((mem_mb / cpus))
EOF
  # cgroup.conf is read by some builds even with proctrack/linuxproc; keep it harmless.
  [ -f "$CONF_DIR/cgroup.conf" ] || echo "CgroupPlugin=autodetect" >"$CONF_DIR/cgroup.conf"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c "munged --force" || munged --force
  else
    munged --force
  fi
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "munged did not start"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

cmd_up() {
  need_root up
  command -v slurmctld >/dev/null || die "slurmctld not found: run '$0 install' first"
  write_conf
  start_munge
  if pid_alive "$STATE/run/slurmctld.pid"; then
    scontrol reconfigure >/dev/null 2>&1 || true  # already up: apply the config just written
  else
    slurmctld -f "$CONF"
  fi
  pid_alive "$STATE/run/slurmd.pid" || slurmd -f "$CONF"
  local host state
  host=$(hostname -s)
  for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
      idle|mixed|allocated) echo "slurm-local: node $host is $state in partition $PARTITION ($(nproc --all) CPUs)"; return 0 ;;
      down*|drain*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  echo "slurm-local: node did not become idle (state '${state:-unknown}'); last log lines:" >&2
  tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  exit 1
}

stop_pidfile() {
  local f=$1
  if pid_alive "$f"; then
    local pid; pid=$(cat "$f")
    kill "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$f"
}

cmd_down() {
  need_root down
  stop_pidfile "$STATE/run/slurmd.pid"
  stop_pidfile "$STATE/run/slurmctld.pid"
  echo "slurm-local: stopped slurmd and slurmctld (munged left running)"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) sinfo ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
