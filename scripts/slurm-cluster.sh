#!/usr/bin/env bash
# slurm-cluster.sh - the project's single-host Slurm test cluster: start | stop | status.
#
# Debian 12 (Slurm 22.05), run as root, no systemd, no cgroups. Idempotent.
#   node $(hostname -s)  8 CPUs (config_overrides), 2 fake GPUs (gres gpu:fake:2), feature x86_64
#   partitions  debug (default, tier 5), owner (tier 10), scavenger (tier 1, PreemptMode=CANCEL):
#               owner/debug jobs preempt scavenger (backfill) jobs on the same node
#               cloud: cloud[1-N], State=CLOUD; ResumeProgram/SuspendProgram are wrappers around
#               `provisioner slurm resume|suspend` (broker state in $BASE/broker: one resource per
#               resumed node on a simulated cloud); with FAKE_CLOUD=1 resume starts a real slurmd per node;
#               $BASE/etc/broker.env (PROVISIONER_* lines), if present, configures their broker
#   slurmdbd    on the local MariaDB (root, no password, 127.0.0.1:3306): sacct, accounts atlas/lsst/cms/dune
#   slurmrestd  127.0.0.1:$RESTD_PORT, JWT auth, openapi v0.0.38 (+ dbv0.0.38 with slurmdbd)
#   jobcomp     filetxt log in $BASE/log/jobcomp.txt (always, with or without slurmdbd)
#
# Knobs (environment):
#   PROVISIONER_SLURM_DIR  base directory                         (default /tmp/provisioner-slurm)
#   CLOUD_NODES            number of CLOUD nodes                  (default 4)
#   FAKE_CLOUD             1 = resume starts slurmd for the node  (default 1)
#   WITH_SLURMDBD          1 = slurmdbd on MariaDB                (default 1)
#   RESTD_PORT             slurmrestd TCP port                    (default 6820)
#   SUSPEND_TIME           idle seconds before a cloud node is suspended (default 60)
# After start: `source $BASE/env.sh` sets SLURM_CONF, SLURMRESTD_URL (no token is exported).
set -euo pipefail

BASE=${PROVISIONER_SLURM_DIR:-/tmp/provisioner-slurm}
CLOUD_NODES=${CLOUD_NODES:-4}
FAKE_CLOUD=${FAKE_CLOUD:-1}
WITH_SLURMDBD=${WITH_SLURMDBD:-1}
RESTD_PORT=${RESTD_PORT:-6820}
SUSPEND_TIME=${SUSPEND_TIME:-60}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONF=$BASE/etc/slurm.conf
export SLURM_CONF=$CONF
ACCOUNTS="atlas lsst cms dune"

log() { echo "[slurm-cluster $(date +%T)] $*"; }
die() { echo "[slurm-cluster] ERROR: $*" >&2; exit 1; }
# alive PID NAME: process exists, is no zombie, and its command name contains NAME
alive() { local s; s=$(ps -o stat=,comm= -p "$1" 2>/dev/null) || return 1
          [[ -n $s && ${s:0:1} != Z && $s == *"$2"* ]]; }
pid_alive() { [[ -f $1 ]] && alive "$(cat "$1")" "$2"; }
wait_for() { # wait_for SECONDS CMD...
  local t=$1 i; shift
  for ((i = 0; i < t * 10; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1; }
stop_pidfile() { # stop_pidfile PIDFILE NAME
  local pf=$1 name=$2 pid i
  [[ -f $pf ]] || return 0
  pid=$(cat "$pf")
  if alive "$pid" "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do alive "$pid" "$name" || break; sleep 0.1; done
    alive "$pid" "$name" && kill -KILL "$pid" 2>/dev/null
    log "stopped $name (pid $pid)"
  fi
  rm -f "$pf"
}

install_packages() {
  local pkgs="munge slurmctld slurmd slurm-client slurmrestd slurm-wlm-jwt-plugin curl perl" missing="" p
  [[ $WITH_SLURMDBD == 1 ]] && pkgs="$pkgs mariadb-server mariadb-client slurmdbd slurm-wlm-mysql-plugin"
  for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [[ -n $missing ]]; then
    log "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 sh -c 'munge -n | unmunge' || die "munged did not start (see /var/log/munge/munged.log)"
  touch "$BASE/run/munged.started-by-us"
  log "munged started"
}

# The power-saving wrappers slurmctld runs: they call the broker's CLI, which gives each node a resource
# of the cheapest fitting cloud offering (recorded in the broker database below) or releases it, and
# (FAKE_CLOUD) starts/stops the node's slurmd. The broker is pinned to a known state directory and the
# embedded defaults (simulated clouds, their units in $BASE/broker/simulated), whatever slurmctld inherited.
write_power_wrappers() {
  # the interpreter itself, not a pyenv/venv shim that may need the caller's environment
  local py verb
  py=$(python3 -c 'import sys; print(sys.executable)')
  mkdir -p "$BASE/broker"
  # The test cluster's policy: the example's, also naming "cloud", the partition its nodes are charged
  # to (the policy fails closed: an experiment it does not name gets no node). It lives in etc/, not
  # broker/: a fresh slurmctld wipes the broker's state, and a policy wiped with it aborts every resume.
  awk '/^\[end\]/ && !done { print "[experiments.cloud]\n"; done = 1 } { print }
       END { if (!done) print "\n[experiments.cloud]" }' "$REPO/examples/policy.toml" >"$BASE/etc/broker-policy.toml"
  for verb in resume suspend; do
    cat >"$BASE/bin/$verb.sh.new" <<EOF
#!/bin/bash
# ${verb^}Program for slurmctld: \$1 is a hostlist expression such as cloud[1-2]
unset PROVISIONER_DATABASE_URL PROVISIONER_BACKENDS_FILE PROVISIONER_POLICY_FILE PROVISIONER_MQTT_URL \
  PROVISIONER_BROKER_ID
export SLURM_CONF=$CONF PATH=/usr/sbin:/usr/bin:/sbin:/bin:\$PATH PYTHONPATH=$REPO
export PROVISIONER_SLURM_FAKE_CLOUD=$FAKE_CLOUD PROVISIONER_SLURM_DIR=$BASE
export PROVISIONER_STATE_DIR=$BASE/broker PROVISIONER_LOG_LEVEL=INFO
export PROVISIONER_POLICY_FILE=$BASE/etc/broker-policy.toml
# the site's broker configuration for the power programs (policy, backends file, state dir), if any
if [[ -f $BASE/etc/broker.env ]]; then set -a; . $BASE/etc/broker.env; set +a; fi
echo "\$(date -u '+%FT%TZ') ${verb^^} \$1" >> $BASE/log/power.log
cd $REPO && exec $py -u -c 'from provisioner.cli import main; main()' slurm $verb "\$1" >> $BASE/log/power.log 2>&1
EOF
    chmod 755 "$BASE/bin/$verb.sh.new"
    mv "$BASE/bin/$verb.sh.new" "$BASE/bin/$verb.sh"  # atomic: slurmctld may be running the old one
  done
  rm -f "$BASE/etc/burst-offerings.json"  # offerings now come from the broker
}

write_config() {
  local host=$1 mem
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  [[ -s $BASE/etc/jwt_hs256.key ]] || dd if=/dev/urandom of="$BASE/etc/jwt_hs256.key" bs=32 count=1 status=none
  chmod 600 "$BASE/etc/jwt_hs256.key"
  local new; new=$(mktemp)
  cat >"$new" <<EOF
# generated by scripts/slurm-cluster.sh
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$BASE/etc/jwt_hs256.key
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
GresTypes=gpu
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
DefMemPerCPU=500
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
ReturnToService=2
MailProg=/bin/true
PrivateData=cloud
StateSaveLocation=$BASE/state/ctld
SlurmdSpoolDir=$BASE/state/d/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=2
Waittime=0
TreeWidth=65533
EOF
  if [[ $WITH_SLURMDBD == 1 ]]; then
    printf '%s\n' JobAcctGatherType=jobacct_gather/linux JobAcctGatherFrequency=5 \
      AccountingStorageType=accounting_storage/slurmdbd AccountingStorageHost=localhost \
      AccountingStorageEnforce=associations AccountingStorageTRES=gres/gpu AccountingStoreFlags=job_comment >>"$new"
  else
    printf '%s\n' JobAcctGatherType=jobacct_gather/none AccountingStorageType=accounting_storage/none >>"$new"
  fi
  if ((CLOUD_NODES > 0)); then
    cat >>"$new" <<EOF
SlurmctldParameters=idle_on_node_suspend,cloud_dns
SuspendProgram=$BASE/bin/suspend.sh
ResumeProgram=$BASE/bin/resume.sh
SuspendTime=$SUSPEND_TIME
SuspendTimeout=10
ResumeTimeout=60
ResumeRate=0
SuspendRate=0
SuspendExcNodes=$host
EOF
  fi
  cat >>"$new" <<EOF
NodeName=$host NodeAddr=127.0.0.1 CPUs=8 Boards=1 SocketsPerBoard=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=$mem Gres=gpu:fake:2 Feature=x86_64 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE PriorityTier=5 PreemptMode=OFF State=UP
PartitionName=owner Nodes=$host MaxTime=INFINITE PriorityTier=10 PreemptMode=OFF State=UP
PartitionName=scavenger Nodes=$host MaxTime=INFINITE PriorityTier=1 PreemptMode=CANCEL State=UP
EOF
  if ((CLOUD_NODES > 0)); then
    cat >>"$new" <<EOF
NodeName=cloud[1-$CLOUD_NODES] NodeAddr=127.0.0.1 NodeHostname=localhost Port=[6821-$((6820 + CLOUD_NODES))] CPUs=4 Boards=1 SocketsPerBoard=1 CoresPerSocket=4 ThreadsPerCore=1 RealMemory=2000 State=CLOUD Feature=cloud,x86_64
PartitionName=cloud Nodes=cloud[1-$CLOUD_NODES] MaxTime=INFINITE PriorityTier=5 PreemptMode=OFF State=UP
EOF
  fi
  # two fake GPUs: slurmd wants device files; character devices aliasing /dev/null (plain files if
  # mknod is not permitted: slurmd then logs an error but still counts them)
  mkdir -p "$BASE/dev"
  local i
  for i in 0 1; do
    [[ -e $BASE/dev/fakegpu$i ]] || mknod "$BASE/dev/fakegpu$i" c 1 3 2>/dev/null || touch "$BASE/dev/fakegpu$i"
  done
  printf 'NodeName=%s Name=gpu Type=fake File=%s/dev/fakegpu[0-1]\n' "$host" "$BASE" >"$BASE/etc/gres.conf"
  CONF_CHANGED=0
  if ! cmp -s "$new" "$CONF"; then mv "$new" "$CONF"; CONF_CHANGED=1; else rm -f "$new"; fi
  chmod 644 "$CONF" "$BASE/etc/gres.conf"
  mkdir -p /etc/slurm
  [[ -L /etc/slurm/gres.conf || ! -e /etc/slurm/gres.conf ]] && ln -sfn "$BASE/etc/gres.conf" /etc/slurm/gres.conf
  # commands without SLURM_CONF (slurmctld's own children, operators) find the same cluster
  if [[ ! -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]]; then ln -sfn "$CONF" /etc/slurm/slurm.conf; fi
}

start_mariadb() {
  if mysqladmin -uroot ping >/dev/null 2>&1; then return; fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  start-stop-daemon --start --oknodo --background --chuid mysql --exec /usr/sbin/mariadbd -- \
    --user=mysql --bind-address=127.0.0.1 --port=3306
  wait_for 60 mysqladmin -uroot ping || die "MariaDB did not start"
  touch "$BASE/run/mariadb.started-by-us"
  log "MariaDB started"
}

start_slurmdbd() {
  if pid_alive "$BASE/run/slurmdbd.pid" slurmdbd; then return; fi
  # a fresh accounting database for a fresh cluster: job ids restart at 1
  mysql -uroot -e "DROP DATABASE IF EXISTS provisioner_slurm_acct; CREATE DATABASE provisioner_slurm_acct;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON provisioner_slurm_acct.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  # slurmdbd.conf sits beside $SLURM_CONF, mode 600, owned by SlurmUser
  cat >"$BASE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$BASE/etc/jwt_hs256.key
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=provisioner_slurm_acct
StorageUser=slurm
StoragePass=slurmpw
EOF
  chmod 600 "$BASE/etc/slurmdbd.conf"
  slurmdbd
  wait_for 30 sacctmgr -n show cluster || { tail -20 "$BASE/log/slurmdbd.log"; die "slurmdbd not answering"; }
  sacctmgr -i add cluster ci >/dev/null
  sacctmgr -i add qos backfill Priority=0 >/dev/null
  local a
  for a in $ACCOUNTS; do
    sacctmgr -i add account "$a" Description="$a experiment" Organization=research >/dev/null
  done
  # root may charge every experiment account; its default stays "root"
  sacctmgr -i add user root Account="${ACCOUNTS// /,}" QOS=normal,backfill >/dev/null
  log "slurmdbd started (pid $(cat "$BASE/run/slurmdbd.pid")), accounts: $ACCOUNTS"
}

start_slurmctld() {
  if pid_alive "$BASE/run/slurmctld.pid" slurmctld; then
    if [[ $CONF_CHANGED == 1 ]]; then scontrol reconfigure; log "slurmctld reconfigured"; fi
    return
  fi
  rm -rf "$BASE"/state/ctld/* "$BASE"/state/d/* "$BASE"/run/slurmd-*.pid "$BASE"/broker/*
  : >"$BASE/log/power.log"; : >"$BASE/log/jobcomp.txt"
  slurmctld -c -i
  wait_for 30 sh -c "scontrol ping | grep -q UP" || { tail -20 "$BASE/log/slurmctld.log"; die "slurmctld not up"; }
  log "slurmctld started (pid $(cat "$BASE/run/slurmctld.pid"))"
}

start_slurmd() {
  local host=$1
  if pid_alive "$BASE/run/slurmd-$host.pid" slurmd; then return; fi
  mkdir -p "$BASE/state/d/$host"
  slurmd 2>>"$BASE/log/slurmd-$host.log"
  node_ok() { sinfo -h -n "$host" -o %t | grep -qE '^(idle|mix|alloc)'; }
  if ! wait_for 30 node_ok; then
    scontrol update nodename="$host" state=resume 2>/dev/null || true
    wait_for 10 node_ok || { tail -20 "$BASE/log/slurmd-$host.log"; die "node $host not idle"; }
  fi
  log "slurmd started (pid $(cat "$BASE/run/slurmd-$host.pid"))"
}

start_slurmrestd() {
  cat >"$BASE/env.sh" <<EOF
export SLURM_CONF=$CONF
export SLURMRESTD_URL=http://127.0.0.1:$RESTD_PORT
EOF
  if pid_alive "$BASE/run/slurmrestd.pid" slurmrestd; then return; fi
  local specs=openapi/v0.0.38
  [[ $WITH_SLURMDBD == 1 ]] && specs=$specs,openapi/dbv0.0.38
  # root needs SLURMRESTD_SECURITY=disable_user_check; SLURM_JWT=daemon makes slurmrestd accept tokens.
  # SLURM_JWT is never exported to clients: sbatch would copy it into jobs and break srun.
  SLURM_JWT=daemon SLURMRESTD_SECURITY=disable_user_check setsid nohup slurmrestd \
    -a rest_auth/jwt -s "$specs" "127.0.0.1:$RESTD_PORT" \
    >"$BASE/log/slurmrestd.log" 2>&1 </dev/null &
  echo $! >"$BASE/run/slurmrestd.pid"
  local jwt; jwt=$(scontrol token lifespan=60 | sed -n 's/^SLURM_JWT=//p')
  wait_for 15 curl -sf -H "X-SLURM-USER-NAME: root" -H "X-SLURM-USER-TOKEN: $jwt" \
    "http://127.0.0.1:$RESTD_PORT/slurm/v0.0.38/ping" ||
    { tail -20 "$BASE/log/slurmrestd.log"; die "slurmrestd not answering"; }
  log "slurmrestd started (pid $(cat "$BASE/run/slurmrestd.pid")) on 127.0.0.1:$RESTD_PORT"
}

cmd_start() {
  [[ $(id -u) == 0 ]] || die "must run as root"
  local t0 host; t0=$(date +%s%N)
  install_packages
  mkdir -p "$BASE"/{etc,bin,log,run,state/ctld,state/d}
  host=$(hostname -s)
  start_munge
  write_power_wrappers
  write_config "$host"
  if [[ $WITH_SLURMDBD == 1 ]]; then start_mariadb; start_slurmdbd; fi
  start_slurmctld
  start_slurmd "$host"
  start_slurmrestd
  log "ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  log "logs: $BASE/log (slurmctld.log slurmd-*.log slurmdbd.log slurmrestd.log power.log jobcomp.txt)"
  log "source $BASE/env.sh for SLURM_CONF and SLURMRESTD_URL"
}

cmd_stop() {
  export SLURM_CONF=$CONF
  if pid_alive "$BASE/run/slurmctld.pid" slurmctld; then
    local jobs; jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ' || true)
    if [[ -n ${jobs// /} ]]; then
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      wait_for 10 sh -c '[ -z "$(squeue -h -t R,CG,CF -o %i)" ]' || true
    fi
  fi
  stop_pidfile "$BASE/run/slurmrestd.pid" slurmrestd
  local pf
  for pf in "$BASE"/run/slurmd-*.pid; do [[ -e $pf ]] && stop_pidfile "$pf" slurmd; done
  stop_pidfile "$BASE/run/slurmctld.pid" slurmctld
  stop_pidfile "$BASE/run/slurmdbd.pid" slurmdbd
  if [[ -f $BASE/run/mariadb.started-by-us ]]; then
    stop_pidfile /run/mysqld/mysqld.pid mariadbd; rm -f "$BASE/run/mariadb.started-by-us"
  fi
  if [[ -f $BASE/run/munged.started-by-us ]]; then
    stop_pidfile /run/munge/munged.pid munged; rm -f "$BASE/run/munged.started-by-us"
  fi
  log "stopped (logs kept in $BASE/log)"
}

cmd_status() {
  local name pf ok=0
  for name in slurmctld slurmdbd slurmrestd; do
    pf=$BASE/run/$name.pid
    if pid_alive "$pf" "$name"; then echo "$name: running (pid $(cat "$pf"))"; else echo "$name: stopped"; fi
  done
  for pf in "$BASE"/run/slurmd-*.pid; do
    [[ -e $pf ]] || continue
    name=${pf##*/slurmd-}; name=${name%.pid}
    if pid_alive "$pf" slurmd; then echo "slurmd $name: running (pid $(cat "$pf"))"; else echo "slurmd $name: stopped"; fi
  done
  if scontrol ping 2>/dev/null | grep -q UP; then sinfo; else ok=1; fi
  echo "logs: $BASE/log"
  return $ok
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
