#!/usr/bin/env bash
# Stop the one-node Slurm cluster that .ci/slurm/start.sh started: slurmd, slurmctld, slurmdbd,
# and the MariaDB server and munged if start.sh started them (it leaves ones it found running).
# Configs, the accounting database and job state stay; start.sh brings everything back.
# T2I_SLURM_INSTANCE=NAME stops the side-by-side cluster of that name instead (see start.sh).
set -uo pipefail
SUFFIX=${T2I_SLURM_INSTANCE:+-$T2I_SLURM_INSTANCE}
RUN=/run/slurm$SUFFIX
T2I_RUN=/run/t2i-slurm$SUFFIX

log() { echo "slurm/stop.sh: $*"; }
stop_pid() {  # stop_pid NAME PID
  local t=0
  [ -n "$2" ] && [ -r "/proc/$2/comm" ] && [ "$(cat "/proc/$2/comm")" = "$1" ] || return 0
  log "stopping $1 (pid $2)"
  kill "$2" 2>/dev/null
  while [ -d "/proc/$2" ] && [ "$t" -lt 60 ]; do sleep 0.5; t=$((t + 1)); done
  [ -d "/proc/$2" ] && kill -9 "$2" 2>/dev/null
  return 0
}
[ "$(id -u)" -eq 0 ] || { echo "slurm/stop.sh: run as root" >&2; exit 1; }

for d in slurmd slurmctld slurmdbd; do
  stop_pid "$d" "$(cat "$RUN/$d.pid" 2>/dev/null)"
  rm -f "$T2I_RUN/$d"
done
if [ -e "$T2I_RUN/mariadb" ]; then
  stop_pid mariadbd "$(cat /run/mysqld/mysqld.pid 2>/dev/null)"
  rm -f "$T2I_RUN/mariadb"
fi
if [ -e "$T2I_RUN/munge" ]; then
  stop_pid munged "$(cat /run/munge/munged.pid 2>/dev/null)"
  rm -f "$T2I_RUN/munge"
fi
log "stopped"
