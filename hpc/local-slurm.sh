#!/usr/bin/env bash
# hpc/local-slurm.sh -- a REAL Slurm cluster on this one machine, for tests and demos.
#
#   hpc/local-slurm.sh start  [STATE_DIR]   bring it up (idempotent: a second start only checks)
#   hpc/local-slurm.sh stop   [STATE_DIR]   cancel jobs, stop every daemon (state is kept)
#   hpc/local-slurm.sh status [STATE_DIR]   daemons alive? + sinfo -N; exit 0 = usable, 1 = not
#
# STATE_DIR defaults to $LOCAL_SLURM_DIR, else /tmp/climb-hpc-slurm.
#
# What runs (Debian packages, Slurm 22.05, no systemd, no cgroups, everything as root):
#   munged (private key + socket)  +  slurmctld  +  N slurmd daemons that emulate N nodes
#   (node1..nodeN, Slurm's "multiple slurmd" mode: same host, one port each)  +  accounting
#   (MariaDB with its own datadir/socket, no TCP, + slurmdbd) so that `sacct` works, which
#   submitit needs to see the state of jobs that died without writing a result.
# Partitions: debug (default; preemptible: requeue after GraceTime) and urgent (higher
# PriorityTier, preempts debug; a preempted job first receives its own --signal).
#
# Every piece of state (config, munge key/socket, slurmctld state, spool, logs, pid files,
# database) lives under STATE_DIR and survives stop/start.  Outside it, `start` only touches:
#   /etc/slurm/slurm.conf  a symlink to STATE_DIR/etc/slurm.conf, made only when that path is
#                          absent or already a symlink that does not belong to another running
#                          cluster (so plain `sinfo` works); `stop` removes it if it is ours.
#   /etc/hosts             one line "127.0.0.1 node1 node2  # climb-hpc-slurm:STATE_DIR" for
#                          node names that do not resolve yet (MASTER_ADDR=node1 works);
#                          `stop` removes that line.
# Clients can always use:  export SLURM_CONF=STATE_DIR/etc/slurm.conf   (or: . STATE_DIR/env.sh)
#
# Environment knobs (all optional):
#   LOCAL_SLURM_DIR=/tmp/climb-hpc-slurm  state folder (or pass it as the 2nd argument)
#   LOCAL_SLURM_NODES=2           number of emulated nodes (node1..nodeN)
#   LOCAL_SLURM_NODE_PREFIX=node  node name prefix
#   LOCAL_SLURM_CPUS=4            CPUs per node.  More than the host has is fine: the nodes are
#                                 oversubscribed (SlurmdParameters=config_overrides), so the default
#                                 gives 2 x 4 = 8 task slots even on a 2-core box.  Empty: use the
#                                 detected CPU layout.
#   LOCAL_SLURM_MEM_MB=           RealMemory per node (default: 95% of detected memory / NODES)
#   LOCAL_SLURM_ACCOUNTING=1      0: no MariaDB/slurmdbd (then `sacct` fails; submitit degrades)
#   LOCAL_SLURM_INSTALL=1         apt-get install missing packages (0: fail instead)
#   LOCAL_SLURM_LINK_ETC=1        0: never touch /etc/slurm/slurm.conf
#   LOCAL_SLURM_ETC_HOSTS=1       0: never touch /etc/hosts (then use MASTER_ADDR=127.0.0.1)
#   LOCAL_SLURM_FRESH=0           1: stop, wipe job state/spool/logs (keeps key + database), start clean
#   LOCAL_SLURM_START_TIMEOUT=60  seconds `start` may take once the packages are installed
#   LOCAL_SLURM_CRED_EXPIRE=10    AuthInfo cred_expire (s, min 5); also how long a requeued job
#                                 waits before it may start again (Slurm's default is 120)
#   LOCAL_SLURM_KILL_WAIT=10      KillWait: seconds between SIGTERM and SIGKILL
#   LOCAL_SLURM_GRACE_TIME=20     GraceTime of partition debug when preempted by "urgent"
#   LOCAL_SLURM_SELECT_PARAMS=CR_Core_Memory
#   LOCAL_SLURM_CTLD_PORT=6817    slurmctld TCP port
#   LOCAL_SLURM_NODE_PORT=17001   slurmd TCP ports: 17001 .. 17000+NODES
#   LOCAL_SLURM_DBD_PORT=6819     slurmdbd TCP port
#   LOCAL_SLURM_EXTRA_CONF=       extra lines appended verbatim to slurm.conf
#   LOCAL_SLURM_KEEP_JOBS=0       stop: 1 = do not cancel jobs first
#   LOCAL_SLURM_PURGE=0           stop: 1 = delete STATE_DIR afterwards
#
# Packages: apt-get install --no-install-recommends slurmctld slurmd slurm-client munge
#           slurmdbd mariadb-server   (init scripts are not used; none of them is started)
# Known log noise: "mpi/pmix_v4: can not load PMIx library" (harmless, MpiDefault=none),
# "Could not open job state file" on the very first start, MariaDB's innodb_buffer_pool_size note.
# Caveats: the nodes are not isolated (same hostname, filesystem, CPUs); nothing enforces
# --mem/--cpus (no cgroups); jobs that ignore SIGTERM take KillWait seconds to die.
set -euo pipefail

CLUSTER=climbhpc
HOSTS_TAG_PREFIX="# climb-hpc-slurm:"

say()  { printf '[local-slurm] %s\n' "$*"; }
warn() { printf '[local-slurm] WARNING: %s\n' "$*" >&2; }
die()  {
  printf '[local-slurm] ERROR: %s\n' "$*" >&2
  [ "${STARTING:-0}" = 0 ] || printf '[local-slurm] (daemons started so far keep running: "%s stop%s" cleans up)\n' "$0" "${DIR:+ $DIR}" >&2
  exit 1
}
# die_log FILE MSG: die, showing the last lines of FILE (a daemon log) first
die_log() {
  if [ -s "$1" ]; then
    printf '[local-slurm] --- last lines of %s:\n' "$1" >&2
    tail -n 8 "$1" >&2 || true
  fi
  die "$2 (see $1)"
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
T0="$(now)"
elapsed() { awk -v a="$T0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
DEADLINE=$(( $(date +%s) + 86400 ))     # set for real in cmd_start, after the packages

# ------------------------------------------------------------------ settings
setup_vars() {
  DIR="${1:-${LOCAL_SLURM_DIR:-/tmp/climb-hpc-slurm}}"
  case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR" ;; esac
  DIR="${DIR%/}"
  NNODES="${LOCAL_SLURM_NODES:-2}"
  NODE_PREFIX="${LOCAL_SLURM_NODE_PREFIX:-node}"
  CPUS_REQ="${LOCAL_SLURM_CPUS-4}"
  ACCOUNTING="${LOCAL_SLURM_ACCOUNTING:-1}"
  INSTALL="${LOCAL_SLURM_INSTALL:-1}"
  LINK_ETC="${LOCAL_SLURM_LINK_ETC:-1}"
  ETC_HOSTS="${LOCAL_SLURM_ETC_HOSTS:-1}"
  FRESH="${LOCAL_SLURM_FRESH:-0}"
  START_TIMEOUT="${LOCAL_SLURM_START_TIMEOUT:-60}"
  CRED_EXPIRE="${LOCAL_SLURM_CRED_EXPIRE:-10}"
  KILL_WAIT="${LOCAL_SLURM_KILL_WAIT:-10}"
  GRACE_TIME="${LOCAL_SLURM_GRACE_TIME:-20}"
  SELECT_PARAMS="${LOCAL_SLURM_SELECT_PARAMS:-CR_Core_Memory}"
  CTLD_PORT="${LOCAL_SLURM_CTLD_PORT:-6817}"
  NODE_PORT="${LOCAL_SLURM_NODE_PORT:-17001}"
  DBD_PORT="${LOCAL_SLURM_DBD_PORT:-6819}"
  EXTRA_CONF="${LOCAL_SLURM_EXTRA_CONF:-}"

  CONF="$DIR/etc/slurm.conf"
  DBD_CONF="$DIR/etc/slurmdbd.conf"
  SETTINGS="$DIR/etc/local-slurm.settings"   # what the last start used; read by status
  MUNGE_SOCKET="$DIR/munge/munge.socket.2"
  MUNGE_PID="$DIR/munge/munged.pid"
  CTLD_PID="$DIR/run/slurmctld.pid"
  DBD_PID="$DIR/run/slurmdbd.pid"
  DB_DIR="$DIR/mysql"
  DB_SOCK="$DB_DIR/mysqld.sock"
  DB_PID="$DB_DIR/mysqld.pid"
  LOG="$DIR/log"
  HOSTS_TAG="${HOSTS_TAG_PREFIX}${DIR}"
  export SLURM_CONF="$CONF"
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

validate_knobs() {
  local pair v
  for pair in NNODES:NODES CTLD_PORT:CTLD_PORT NODE_PORT:NODE_PORT DBD_PORT:DBD_PORT CRED_EXPIRE:CRED_EXPIRE \
              KILL_WAIT:KILL_WAIT GRACE_TIME:GRACE_TIME START_TIMEOUT:START_TIMEOUT; do
    v="${pair%%:*}"
    is_uint "${!v}" || die "LOCAL_SLURM_${pair#*:}='${!v}' is not a non-negative integer"
  done
  [ "$NNODES" -ge 1 ] || die "LOCAL_SLURM_NODES must be >= 1"
  [ -z "$CPUS_REQ" ] || { is_uint "$CPUS_REQ" && [ "$CPUS_REQ" -ge 1 ]; } \
    || die "LOCAL_SLURM_CPUS='$CPUS_REQ' must be a number >= 1 (or empty for the detected layout)"
  [ "$CRED_EXPIRE" -ge 5 ] || die "LOCAL_SLURM_CRED_EXPIRE must be >= 5 (Slurm silently falls back to 120 below that)"
  [[ "$NODE_PREFIX" =~ ^[A-Za-z][A-Za-z0-9-]*$ ]] || die "LOCAL_SLURM_NODE_PREFIX='$NODE_PREFIX': use letters, digits, '-'"
  case "$DIR" in *[[:space:]]*) die "STATE_DIR must not contain spaces: '$DIR'" ;; esac
}

# ------------------------------------------------------------------ process helpers
# pid_alive PIDFILE NAME: PIDFILE holds the pid of a live process whose comm is NAME.
# The sandbox's PID 1 reaps orphans slowly, so a stopped daemon can linger as a zombie:
# state Z counts as dead.
pid_alive() {
  local pf="$1" name="$2" pid
  [ -s "$pf" ] || return 1
  pid="$(cat "$pf" 2>/dev/null)" || return 1
  is_uint "$pid" || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}
pid_of() { cat "$1" 2>/dev/null || echo '?'; }

# stop_pidfile PIDFILE NAME [SECONDS]: SIGTERM the daemon by its pid, wait, SIGKILL if needed.
stop_pidfile() {
  local pf="$1" name="$2" secs="${3:-20}" pid end
  if ! pid_alive "$pf" "$name"; then rm -f "$pf"; return 0; fi
  pid="$(cat "$pf")"
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  end=$(( $(date +%s) + secs ))
  while pid_alive "$pf" "$name" && [ "$(date +%s)" -lt "$end" ]; do sleep 0.1; done
  if pid_alive "$pf" "$name"; then
    warn "$name ($pid) ignored SIGTERM for ${secs}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  pid_alive "$pf" "$name" && { warn "$name ($pid) is still alive"; return 1; }
  rm -f "$pf"
}

# port_busy PORT: something LISTENs on TCP PORT (any address, v4 or v6).
port_busy() {
  local hex; hex="$(printf '%04X' "$1")"
  grep -qE "^ *[0-9]+: [0-9A-F]+:${hex} [0-9A-F]+:0000 0A " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
# port_owner PORT: best effort "pid N: command line" of the listener (only used for errors).
port_owner() {
  local hex inode fd pid
  hex="$(printf '%04X' "$1")"
  inode="$(awk -v h=":$hex" '$2 ~ h"$" && $4 == "0A" {print $10; exit}' /proc/net/tcp /proc/net/tcp6 2>/dev/null)"
  [ -n "$inode" ] || return 0
  for fd in /proc/[0-9]*/fd/*; do
    if [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$inode]" ]; then
      pid="${fd#/proc/}"; pid="${pid%%/*}"
      printf 'pid %s: %s' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | sed 's/ $//')"
      return 0
    fi
  done
}

# wait_for SECONDS CMD...: retry CMD every 0.2 s until it succeeds; capped by the start deadline.
wait_for() {
  local end; end=$(( $(date +%s) + $1 )); shift
  [ "$end" -le "$DEADLINE" ] || end="$DEADLINE"
  while :; do
    "$@" >/dev/null 2>&1 && return 0
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.2
  done
}

# ------------------------------------------------------------------ node list / settings file
make_node_list() {
  local i
  NODES=()
  for (( i = 1; i <= NNODES; i++ )); do NODES+=("${NODE_PREFIX}$i"); done
  if [ "$NNODES" = 1 ]; then NODELIST="${NODE_PREFIX}1"; else NODELIST="${NODE_PREFIX}[1-${NNODES}]"; fi
  LAST_PORT=$(( NODE_PORT + NNODES - 1 ))
}
# setting KEY: value from the settings file written by the last start (empty if none)
setting() { sed -n "s/^$1=//p" "$SETTINGS" 2>/dev/null | tail -n 1; }

# ------------------------------------------------------------------ start: packages
ensure_packages() {
  local need=() b
  for b in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client; do
    command -v "${b%%:*}" >/dev/null 2>&1 || need+=("${b##*:}")
  done
  if [ "$ACCOUNTING" = 1 ]; then
    command -v slurmdbd >/dev/null 2>&1 || need+=(slurmdbd)
    { command -v mariadbd || command -v mysqld; } >/dev/null 2>&1 || need+=(mariadb-server)
    command -v mariadb-install-db >/dev/null 2>&1 || need+=(mariadb-server)
    command -v mariadb >/dev/null 2>&1 || need+=(mariadb-client)
  fi
  [ "${#need[@]}" -gt 0 ] || return 0
  [ "$INSTALL" = 1 ] || die "missing packages: ${need[*]} (LOCAL_SLURM_INSTALL=0, so not installing)"
  command -v apt-get >/dev/null 2>&1 || die "missing packages: ${need[*]}, and no apt-get to install them"
  say "installing ${need[*]} with apt-get (no recommends) ..."
  local aptlog="/tmp/local-slurm-apt.$$.log"
  export DEBIAN_FRONTEND=noninteractive
  # Lock::Timeout: wait for another apt/dpkg run to finish instead of failing at once.
  # The packages' init scripts do not start anything here (policy-rc.d / no systemd).
  { apt-get -o DPkg::Lock::Timeout=600 update -qq \
    && apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}"; } \
    >"$aptlog" 2>&1 || { tail -n 20 "$aptlog" >&2; die "apt-get failed (full log: $aptlog)"; }
  rm -f "$aptlog"
  say "packages installed ($(elapsed)s)"
}

# ------------------------------------------------------------------ start: folders, node shape, configs
prepare_dirs() {
  if [ "$FRESH" = 1 ] && [ -d "$DIR" ]; then
    say "LOCAL_SLURM_FRESH=1: stopping the cluster and wiping job state, spool and logs under $DIR"
    stop_all >/dev/null || true
    rm -rf "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
  fi
  mkdir -p "$DIR"/{etc,state,spool,log,run,munge}
  chmod 755 "$DIR" "$DIR/munge"   # munged insists that every dir above its socket is a+x
  chmod 700 "$DIR/state"
}

detect_shape() {
  local detect d_cpus d_mem
  HOST="$(hostname -s 2>/dev/null || hostname)"
  [ -n "$HOST" ] || die "empty hostname"
  # e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  detect="$(slurmd -C 2>/dev/null | head -n 1 || true)"
  field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$detect"; }
  d_cpus="$(field CPUs)";       [ -n "$d_cpus" ] || d_cpus="$(nproc)"
  d_mem="$(field RealMemory)";  [ -n "$d_mem" ] || d_mem="$(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo)"
  MEM="${LOCAL_SLURM_MEM_MB:-$(( d_mem * 95 / 100 / NNODES ))}"
  is_uint "$MEM" || die "LOCAL_SLURM_MEM_MB='$MEM' is not a number"
  [ "$MEM" -ge 256 ] || MEM=256
  SLURMD_PARAMS=""
  if [ -n "$CPUS_REQ" ] && [ "$CPUS_REQ" != "$d_cpus" ]; then
    # claim a made-up layout; config_overrides makes slurmd accept it although the host differs
    CPUS="$CPUS_REQ"
    NODE_SHAPE="CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1"
    SLURMD_PARAMS="SlurmdParameters=config_overrides"
  else
    CPUS="$d_cpus"
    if [ -n "$(field SocketsPerBoard)" ]; then
      NODE_SHAPE="CPUs=$CPUS Boards=$(field Boards) SocketsPerBoard=$(field SocketsPerBoard) CoresPerSocket=$(field CoresPerSocket) ThreadsPerCore=$(field ThreadsPerCore)"
    else
      NODE_SHAPE="CPUs=$CPUS"
    fi
  fi
  # Without DefMemPerCPU a job without --mem takes the whole node's memory and jobs serialize.
  DEF_MEM=$(( MEM / CPUS )); [ "$DEF_MEM" -le 1024 ] || DEF_MEM=1024
}

# replace_if_changed NEW TARGET: keep TARGET's mtime when nothing changed
replace_if_changed() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then rm -f "$1"; else mv -f "$1" "$2"; fi
}

write_configs() {
  local acct_lines jag
  acct_lines="AccountingStorageType=accounting_storage/none"
  jag=jobacct_gather/none
  if [ "$ACCOUNTING" = 1 ]; then
    acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=${DBD_PORT}
# for connections to slurmdbd the munge socket is taken from AccountingStoragePass, not AuthInfo
AccountingStoragePass=${MUNGE_SOCKET}"
    jag=jobacct_gather/linux       # /proc based: MaxRSS etc. in sacct/sstat
  fi
  cat >"$CONF.new" <<EOF
# Generated by hpc/local-slurm.sh -- ${NNODES} emulated node(s) on host ${HOST}; no systemd, no cgroups.
# Rewritten by every start; put local changes in LOCAL_SLURM_EXTRA_CONF instead.
ClusterName=${CLUSTER}
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# socket: our private munged.  cred_expire: also the wait before a requeued job may restart
# (default 120 s; the minimum is 5).
AuthInfo=socket=${MUNGE_SOCKET},cred_expire=${CRED_EXPIRE}
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${NODE_PORT}
StateSaveLocation=${DIR}/state
# %n = node name: every slurmd of the "multiple slurmd" mode gets its own spool, pid and log
SlurmdSpoolDir=${DIR}/spool/slurmd-%n
SlurmctldPidFile=${DIR}/run/slurmctld.pid
SlurmdPidFile=${DIR}/run/slurmd-%n.pid
SlurmctldLogFile=${LOG}/slurmctld.log
SlurmdLogFile=${LOG}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# the default mail program does not exist here and slurmctld refuses to start without one
MailProg=/bin/true
# --- no systemd / no cgroups: plain /proc based process tracking
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=${jag}
JobAcctGatherFrequency=30
MpiDefault=none
SwitchType=switch/none
# preempt_send_user_signal: a preempted job first gets its own --signal (submitit: USR2, so it
# checkpoints and requeues itself) instead of SIGTERM; then GraceTime of partition debug applies
SlurmctldParameters=preempt_send_user_signal
${SLURMD_PARAMS}
# --- accounting / completion log
${acct_lines}
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG}/jobcomp.txt
# --- scheduling
SchedulerType=sched/backfill
# main scheduler period defaults to 60 s: short, so that requeued jobs restart promptly
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=${SELECT_PARAMS}
DefMemPerCPU=${DEF_MEM}
MaxArraySize=10001
MaxJobCount=100000
# --- requeue / preemption: jobs in partition "urgent" preempt (requeue) jobs of "debug"
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# --- timers (short, for tests)
ReturnToService=2
KillWait=${KILL_WAIT}
MinJobAge=300
InactiveLimit=0
Waittime=0
SlurmctldTimeout=120
SlurmdTimeout=300
# --- nodes and partitions: "multiple slurmd" mode -- every node has the same NodeHostname and
# NodeAddr and its own Port; each slurmd is started as "slurmd -N <nodename>"
NodeName=${NODELIST} NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=${NODE_PORT}-${LAST_PORT} ${NODE_SHAPE} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug  Nodes=${NODELIST} Default=YES MaxTime=INFINITE State=UP PriorityTier=1  PreemptMode=REQUEUE GraceTime=${GRACE_TIME}
PartitionName=urgent Nodes=${NODELIST} Default=NO  MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
${EXTRA_CONF}
EOF
  replace_if_changed "$CONF.new" "$CONF"
  chmod 644 "$CONF"

  if [ "$ACCOUNTING" = 1 ]; then
    cat >"$DBD_CONF.new" <<EOF
# Generated by hpc/local-slurm.sh.  slurmdbd has no -f option: it reads the slurmdbd.conf
# next to \$SLURM_CONF.  MariaDB is reached through MYSQL_UNIX_PORT (set when starting slurmdbd).
AuthType=auth/munge
AuthInfo=socket=${MUNGE_SOCKET}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=${DBD_PORT}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=root
LogFile=${LOG}/slurmdbd.log
PidFile=${DBD_PID}
DebugLevel=info
EOF
    chmod 600 "$DBD_CONF.new"      # slurmdbd refuses a world-readable config
    replace_if_changed "$DBD_CONF.new" "$DBD_CONF"
  fi

  cat >"$DIR/env.sh.new" <<EOF
# source me:  . $DIR/env.sh
export SLURM_CONF=$CONF
EOF
  replace_if_changed "$DIR/env.sh.new" "$DIR/env.sh"
  cat >"$SETTINGS.new" <<EOF
NODES=${NODES[*]}
ACCOUNTING=${ACCOUNTING}
CTLD_PORT=${CTLD_PORT}
NODE_PORT=${NODE_PORT}
DBD_PORT=${DBD_PORT}
EOF
  replace_if_changed "$SETTINGS.new" "$SETTINGS"
}

# The config a daemon was started with is copied to run/<name>.started.  Comparing against
# that copy (not against the previous slurm.conf) means that a start which died half-way
# still restarts daemons that run on an outdated config.
conf_differs() { ! cmp -s "$1" "$DIR/run/$(basename "$1").started"; }

any_slurmd_alive() {
  local pf
  for pf in "$DIR"/run/slurmd-*.pid; do
    [ -e "$pf" ] && pid_alive "$pf" slurmd && return 0
  done
  return 1
}
stop_all_slurmd() {
  local pf rc=0
  for pf in "$DIR"/run/slurmd-*.pid; do
    [ -e "$pf" ] && { stop_pidfile "$pf" slurmd || rc=1; }
  done
  return "$rc"
}

restart_if_config_changed() {
  if conf_differs "$CONF" && { pid_alive "$CTLD_PID" slurmctld || any_slurmd_alive; }; then
    say "slurm.conf changed since the daemons started -> restarting slurmctld and the slurmds"
    stop_all_slurmd || true
    stop_pidfile "$CTLD_PID" slurmctld || die "could not stop the old slurmctld"
  fi
  if [ "$ACCOUNTING" = 1 ] && pid_alive "$DBD_PID" slurmdbd && conf_differs "$DBD_CONF"; then
    say "slurmdbd.conf changed -> restarting slurmdbd"
    stop_pidfile "$DBD_PID" slurmdbd || die "could not stop the old slurmdbd"
  fi
  # nodes beyond LOCAL_SLURM_NODES (after lowering it) would otherwise keep running
  local pf n
  for pf in "$DIR"/run/slurmd-*.pid; do
    [ -e "$pf" ] || continue
    n="${pf##*/slurmd-}"; n="${n%.pid}"
    [[ " ${NODES[*]} " == *" $n "* ]] || stop_pidfile "$pf" slurmd || true
  done
}

# Fail before starting anything if a port we are about to bind is taken (e.g. by another
# cluster: run only one per set of ports, or change LOCAL_SLURM_*_PORT).
preflight_ports() {
  local checks=() c port what i owner
  pid_alive "$CTLD_PID" slurmctld || checks+=("$CTLD_PORT:slurmctld:LOCAL_SLURM_CTLD_PORT")
  for (( i = 0; i < NNODES; i++ )); do
    pid_alive "$DIR/run/slurmd-${NODES[$i]}.pid" slurmd \
      || checks+=("$(( NODE_PORT + i )):slurmd ${NODES[$i]}:LOCAL_SLURM_NODE_PORT")
  done
  if [ "$ACCOUNTING" = 1 ]; then
    pid_alive "$DBD_PID" slurmdbd || checks+=("$DBD_PORT:slurmdbd:LOCAL_SLURM_DBD_PORT")
  fi
  for c in ${checks[@]+"${checks[@]}"}; do
    port="${c%%:*}"; what="${c#*:}"
    if port_busy "$port"; then
      owner="$(port_owner "$port")"
      die "TCP port $port (for ${what%%:*}) is already in use${owner:+ by $owner}. Another Slurm cluster? Stop it, or set ${what##*:}"
    fi
  done
}

# ------------------------------------------------------------------ start: daemons
# launch LOGFILE CMD...: start a self-daemonizing program with its stdio away from our caller
# (so `start | tee` or `$(start)` do not hang); early errors go to LOGFILE.
launch() { local out="$1"; shift; "$@" </dev/null >>"$out" 2>&1; }

start_munge() {
  if [ ! -s "$DIR/munge/munge.key" ]; then
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile="$DIR/munge/munge.key" || die "mungekey failed"
    else
      dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
    fi
    chmod 600 "$DIR/munge/munge.key"
  fi
  if pid_alive "$MUNGE_PID" munged; then
    say "munged already running (pid $(pid_of "$MUNGE_PID"))"; return 0
  fi
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  # --force: start although a stale socket/lock may exist (we just removed ours)
  launch "$LOG/munged.out" munged --force --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
      --pid-file="$MUNGE_PID" --log-file="$LOG/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || die_log "$LOG/munged.out" "munged failed to start"
  wait_for 10 bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'" \
    || die_log "$LOG/munged.log" "munge round-trip failed"
  say "munged started (pid $(pid_of "$MUNGE_PID"))"
}

start_accounting() {
  local mysqld clusters
  mysqld="$(command -v mariadbd || command -v mysqld)"
  mkdir -p "$DB_DIR"
  if [ ! -d "$DB_DIR/data/mysql" ]; then
    say "initialising the MariaDB data dir $DB_DIR/data"
    rm -rf "$DB_DIR/data"
    mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR/data" \
        --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
      || die_log "$LOG/mariadb-install.log" "mariadb-install-db failed"
  fi
  if pid_alive "$DB_PID" "$(basename "$mysqld")"; then
    say "MariaDB already running (pid $(pid_of "$DB_PID"))"
  else
    # mariadbd does not daemonize: background it in its own session (setsid), so that a
    # Ctrl-C / kill of the caller's process group does not take it down.  No TCP at all.
    setsid "$mysqld" --no-defaults --user=root --datadir="$DB_DIR/data" --socket="$DB_SOCK" \
      --pid-file="$DB_PID" --skip-networking --log-error="$LOG/mariadb.log" \
      --innodb-buffer-pool-size=128M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
      </dev/null >>"$LOG/mariadb.out" 2>&1 &
    # setsid execs (we are not a group leader), so $! is mariadbd itself.  Write the pid file
    # now: mariadbd writes it late, and a `stop` right after a failed start must find it.
    echo "$!" >"$DB_PID"
    wait_for 45 mariadb --no-defaults -S "$DB_SOCK" -u root -e "select 1" \
      || die_log "$LOG/mariadb.log" "MariaDB did not come up"
    say "MariaDB started (pid $(pid_of "$DB_PID"))"
  fi
  mariadb --no-defaults -S "$DB_SOCK" -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;" \
    || die "could not create the slurm_acct_db database"

  if pid_alive "$DBD_PID" slurmdbd; then
    say "slurmdbd already running (pid $(pid_of "$DBD_PID"))"
  else
    # StorageParameters has no socket option in 22.05, but libmariadb honours MYSQL_UNIX_PORT
    MYSQL_UNIX_PORT="$DB_SOCK" launch "$LOG/slurmdbd.out" slurmdbd \
      || die_log "$LOG/slurmdbd.log" "slurmdbd failed to start"
    cp "$DBD_CONF" "$DIR/run/slurmdbd.conf.started"
    wait_for 30 sacctmgr -n -i show cluster || die_log "$LOG/slurmdbd.log" "slurmdbd is not answering"
    say "slurmdbd started on port $DBD_PORT (pid $(pid_of "$DBD_PID"))"
  fi
  # slurmctld needs its cluster row.  (No grep -q in a pipe under pipefail: SIGPIPE would
  # make the pipeline fail and end the script silently.)
  clusters="$(timeout 15 sacctmgr -n -P show cluster format=cluster 2>/dev/null || true)"
  if ! grep -qx "$CLUSTER" <<<"$clusters"; then
    timeout 15 sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
    say "registered cluster $CLUSTER in the accounting database"
  fi
}

# accounting switched off (LOCAL_SLURM_ACCOUNTING=0) after a start with it: stop its daemons
stop_accounting() {
  stop_pidfile "$DBD_PID" slurmdbd || true
  stop_mariadb || true
}
stop_mariadb() {
  local name
  [ -s "$DB_PID" ] || return 0
  name="$(cat "/proc/$(cat "$DB_PID")/comm" 2>/dev/null || true)"
  case "$name" in
    mariadbd|mysqld) stop_pidfile "$DB_PID" "$name" 30 ;;
    *) rm -f "$DB_PID" ;;
  esac
}

start_slurmctld() {
  local args
  if pid_alive "$CTLD_PID" slurmctld; then
    say "slurmctld already running (pid $(pid_of "$CTLD_PID"))"; return 0
  fi
  args=(-f "$CONF")
  [ -s "$DIR/state/job_state" ] || args+=(-c)   # first start: no saved state to recover
  launch "$LOG/slurmctld.out" slurmctld "${args[@]}" || die_log "$LOG/slurmctld.out" "slurmctld failed to start"
  wait_for 30 ctld_up || die_log "$LOG/slurmctld.log" "slurmctld is not answering"
  cp "$CONF" "$DIR/run/slurm.conf.started"
  say "slurmctld started on port $CTLD_PORT (pid $(pid_of "$CTLD_PID"))"
}
ctld_up() { local out; out="$(timeout 5 scontrol ping 2>/dev/null)" && [[ "$out" == *"is UP"* ]]; }

start_slurmds() {
  local i n pf
  for (( i = 0; i < NNODES; i++ )); do
    n="${NODES[$i]}"; pf="$DIR/run/slurmd-$n.pid"
    if pid_alive "$pf" slurmd; then
      say "slurmd $n already running (pid $(pid_of "$pf"))"; continue
    fi
    mkdir -p "$DIR/spool/slurmd-$n"
    # -N: act as node $n (multiple slurmd mode); %n in the slurm.conf paths expands to it
    launch "$LOG/slurmd-$n.out" slurmd -f "$CONF" -N "$n" \
      || die_log "$LOG/slurmd-$n.out" "slurmd $n failed to start"
    wait_for 10 pid_alive "$pf" slurmd || die_log "$LOG/slurmd-$n.log" "slurmd $n did not stay up"
    say "slurmd $n started on port $(( NODE_PORT + i )) (pid $(pid_of "$pf"))"
  done
}

# /etc/hosts: make the node names resolve (127.0.0.1) for MASTER_ADDR=<first node> style code
update_etc_hosts() {
  [ "$ETC_HOSTS" = 1 ] || return 0
  local n unresolved=""
  for n in "${NODES[@]}"; do getent hosts "$n" >/dev/null 2>&1 || unresolved="$unresolved $n"; done
  [ -n "$unresolved" ] || return 0
  remove_etc_hosts_line               # ours may list an older node set
  unresolved=""
  for n in "${NODES[@]}"; do getent hosts "$n" >/dev/null 2>&1 || unresolved="$unresolved $n"; done
  [ -n "$unresolved" ] || return 0
  printf '127.0.0.1 %s  %s\n' "${unresolved# }" "$HOSTS_TAG" >>/etc/hosts \
    || { warn "could not write /etc/hosts; node names do not resolve (use MASTER_ADDR=127.0.0.1)"; return 0; }
  say "added to /etc/hosts: 127.0.0.1${unresolved}"
}
remove_etc_hosts_line() {
  grep -qF "$HOSTS_TAG" /etc/hosts 2>/dev/null || return 0
  local tmp; tmp="$(mktemp)"
  # match the tag at the end of the line only, so /tmp/x does not also remove /tmp/x2's line;
  # rewrite in place (keeps the inode: /etc/hosts may be a bind mount)
  awk -v tag="$HOSTS_TAG" '{ if (length($0) >= length(tag) && substr($0, length($0) - length(tag) + 1) == tag) next; print }' \
    /etc/hosts >"$tmp" && cat "$tmp" >/etc/hosts
  rm -f "$tmp"
  say "removed our line from /etc/hosts"
}

# usable = every node idle/mixed/allocated/completing in partition debug ('*' = not responding
# makes the state e.g. "idle*", which does not match)
nodes_ok() {
  local st
  st="$(timeout 5 sinfo -h -N -p debug -o '%N %T' 2>/dev/null)" || return 1
  [ "$(grep -cE ' (idle|mixed|allocated|completing)$' <<<"$st")" -ge "$NNODES" ]
}
wait_nodes() {
  wait_for 20 nodes_ok && return 0
  warn "nodes not all usable yet: $(timeout 5 sinfo -h -N -o '%N=%T' 2>/dev/null | tr '\n' ' '); trying State=RESUME"
  timeout 5 scontrol update NodeName="$NODELIST" State=RESUME >/dev/null 2>&1 || true
  wait_for 20 nodes_ok \
    || die "nodes not usable: $(timeout 5 sinfo -h -N -o '%N %T %E' 2>/dev/null | tr '\n' ';'); see $LOG/"
}

# /etc/slurm/slurm.conf -> our config, so that clients work without SLURM_CONF.  Done last, and
# never over a real file or over a link to another cluster whose slurmctld is still running.
link_etc() {
  [ "$LINK_ETC" = 1 ] || return 0
  local cur note=""
  cur="$(readlink /etc/slurm/slurm.conf 2>/dev/null || true)"
  if [ "$cur" = "$CONF" ]; then
    return 0
  elif [ -L /etc/slurm/slurm.conf ] && pid_alive "$(dirname "$(dirname "$cur")")/run/slurmctld.pid" slurmctld; then
    note="/etc/slurm/slurm.conf links to another running cluster ($cur): left alone"
  elif [ -L /etc/slurm/slurm.conf ] || [ ! -e /etc/slurm/slurm.conf ]; then
    mkdir -p /etc/slurm && ln -sfn "$CONF" /etc/slurm/slurm.conf \
      && say "linked /etc/slurm/slurm.conf -> $CONF" \
      || note="could not link /etc/slurm/slurm.conf"
  else
    note="/etc/slurm/slurm.conf is a real file: left alone"
  fi
  [ -z "$note" ] || warn "$note -> clients MUST export SLURM_CONF=$CONF"
}

cmd_start() {
  [ "$(id -u)" = 0 ] || die "start must run as root (slurmd setuids to the job owners; munged/slurmdbd run as root here)"
  validate_knobs
  ensure_packages
  DEADLINE=$(( $(date +%s) + START_TIMEOUT ))
  STARTING=1
  make_node_list
  prepare_dirs
  detect_shape
  write_configs
  restart_if_config_changed
  preflight_ports
  start_munge
  if [ "$ACCOUNTING" = 1 ]; then start_accounting; else stop_accounting; fi
  start_slurmctld
  start_slurmds
  update_etc_hosts
  wait_nodes
  link_etc
  say "cluster $CLUSTER ready in $(elapsed)s: Slurm $(slurmctld -V 2>/dev/null | awk '{print $2}'), nodes $NODELIST on host $HOST," \
      "CPUs=$CPUS and RealMemory=${MEM}M per node, accounting=$([ "$ACCOUNTING" = 1 ] && echo slurmdbd || echo none)"
  timeout 10 sinfo -N || true
  say "state dir: $DIR   logs: $LOG"
  say "point the Slurm tools at it:  export SLURM_CONF=$CONF    (or: . $DIR/env.sh)"
  say "stop it:  $0 stop $DIR"
}

# ------------------------------------------------------------------ stop
cancel_jobs() {
  [ "${LOCAL_SLURM_KEEP_JOBS:-0}" = 1 ] && return 0
  pid_alive "$CTLD_PID" slurmctld || return 0
  local jobs end
  jobs="$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)"
  [ -n "${jobs// /}" ] || return 0
  say "cancelling jobs: $jobs"
  # shellcheck disable=SC2086   # word splitting of the job id list is intended
  timeout 10 scancel $jobs 2>/dev/null || true
  # jobs that ignore SIGTERM (submitit does) need KillWait seconds
  end=$(( $(date +%s) + 30 ))
  while [ -n "$(timeout 5 squeue -h -t R,CG,S,CF -o %A 2>/dev/null || true)" ] && [ "$(date +%s)" -lt "$end" ]; do
    sleep 0.2
  done
}

# stop_all: stop every daemon of STATE_DIR (by pid file, after checking the process name)
stop_all() {
  local rc=0 left="" c d
  cancel_jobs
  stop_all_slurmd || rc=1
  stop_pidfile "$CTLD_PID" slurmctld || rc=1
  stop_pidfile "$DBD_PID" slurmdbd || rc=1
  stop_mariadb || rc=1
  stop_pidfile "$MUNGE_PID" munged || rc=1
  rm -f "$DIR"/run/*.started
  # job step daemons normally exit with their jobs; report (never kill) leftovers
  for c in /proc/[0-9]*/comm; do
    d="${c%/comm}"
    [ "$(cat "$c" 2>/dev/null)" = slurmstepd ] && ! grep -q '^State:[[:space:]]*Z' "$d/status" 2>/dev/null \
      && left="$left ${d#/proc/}"
  done
  [ -z "$left" ] || warn "slurmstepd processes still alive (pids:$left) -- jobs still completing?"
  return "$rc"
}

cmd_stop() {
  [ "$(id -u)" = 0 ] || die "stop must run as root"
  if [ ! -d "$DIR" ]; then say "nothing to stop: $DIR does not exist"; return 0; fi
  local rc=0
  stop_all || rc=1
  if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    rm -f /etc/slurm/slurm.conf && say "removed the symlink /etc/slurm/slurm.conf"
  fi
  remove_etc_hosts_line || true
  if [ "$rc" != 0 ]; then
    warn "some daemons could not be stopped"
  elif [ "${LOCAL_SLURM_PURGE:-0}" = 1 ]; then
    rm -rf "$DIR" && say "stopped in $(elapsed)s; deleted $DIR"
  else
    say "stopped in $(elapsed)s (state kept in $DIR)"
  fi
  return "$rc"
}

# ------------------------------------------------------------------ status
cmd_status() {
  if [ ! -f "$CONF" ]; then say "no cluster in $DIR (never started there)"; return 1; fi
  local ok=0 nodes acct n pf mysqld_name line
  nodes="$(setting NODES)"; acct="$(setting ACCOUNTING)"
  # report NAME PIDFILE COMM: one status line; any dead daemon makes the cluster unusable
  report() {
    if pid_alive "$2" "$3"; then printf '  %-16s running (pid %s)\n' "$1" "$(pid_of "$2")"
    else printf '  %-16s NOT running\n' "$1"; ok=1; fi
  }
  say "cluster $CLUSTER in $DIR (SLURM_CONF=$CONF)"
  report munged "$MUNGE_PID" munged
  if [ "$acct" = 1 ]; then
    mysqld_name="$(basename "$(command -v mariadbd || command -v mysqld || echo mariadbd)")"
    report mariadb "$DB_PID" "$mysqld_name"
    report slurmdbd "$DBD_PID" slurmdbd
  fi
  report slurmctld "$CTLD_PID" slurmctld
  for n in $nodes; do report "slurmd $n" "$DIR/run/slurmd-$n.pid" slurmd; done
  # slurmds left over from a larger LOCAL_SLURM_NODES are shown but do not count
  for pf in "$DIR"/run/slurmd-*.pid; do
    [ -e "$pf" ] || continue
    n="${pf##*/slurmd-}"; n="${n%.pid}"
    [[ " $nodes " == *" $n "* ]] || printf '  %-16s %s (not in the current config)\n' "slurmd $n" \
      "$(pid_alive "$pf" slurmd && echo "running (pid $(pid_of "$pf"))" || echo 'NOT running')"
  done
  if pid_alive "$CTLD_PID" slurmctld; then
    if ! timeout 10 sinfo -N; then ok=1; fi
    # every configured node must be usable (not down/drained/not responding)
    line="$(timeout 5 sinfo -h -N -p debug -o '%N %T' 2>/dev/null || true)"
    for n in $nodes; do
      grep -qE "^$n (idle|mixed|allocated|completing)$" <<<"$line" || { ok=1; say "node $n is not usable"; }
    done
  fi
  if [ "$ok" = 0 ]; then say "status: UP (usable)"; else say "status: NOT usable"; fi
  return "$ok"
}

# ------------------------------------------------------------------ main
main() {
  local cmd="${1:-}"
  [ "$#" -le 2 ] || { usage >&2; die "too many arguments"; }
  case "$cmd" in
    start)  setup_vars "${2:-}"; cmd_start ;;
    stop)   setup_vars "${2:-}"; cmd_stop ;;
    status) setup_vars "${2:-}"; cmd_status ;;
    -h|--help|help) usage ;;
    *) usage >&2; die "unknown command '${cmd}' (use start, stop or status)" ;;
  esac
}

main "$@"
