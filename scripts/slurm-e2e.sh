#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, end to end: the job-array script that `sweep --emit-slurm`
# writes is submitted with `sbatch --wait`, its shards are merged with `report`, and the merged table must
# equal an unsharded sweep of the same grid, byte for byte (training time is not in results.csv). Then one
# array task is cancelled mid-run, the same script is submitted again, and the merge must still be equal.
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge when they are missing. Every daemon runs from
# a configuration in a temporary folder and is stopped by its process id, also on failure; every wait has
# a time limit. Needs root (CI and the development machines are root).
set -euo pipefail
# The daemons and the package install need root: elsewhere (a hosted CI runner) run again through sudo.
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "slurm-e2e: FAILED: needs root or sudo" >&2; exit 1; }
  exec sudo --preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
repo=$(pwd)

say() { echo "slurm-e2e: $*"; }
fail() { echo "slurm-e2e: FAILED: $*" >&2; exit 1; }

missing=0
for cmd in munged mungekey slurmctld slurmd sbatch squeue scancel sinfo; do
  command -v "$cmd" >/dev/null || missing=1
done
if [ "$missing" = 1 ]; then
  say "installing Debian's slurmctld, slurmd, slurm-client and munge"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

work=$(mktemp -d /tmp/emofuse-slurm.XXXXXX)
chmod 755 "$work"
daemons=()   # pids, in start order

stop_all() {
  local i pid
  for ((i = ${#daemons[@]} - 1; i >= 0; i--)); do
    pid=${daemons[$i]}
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}
on_exit() {
  local rc=$?
  stop_all
  if [ "$rc" != 0 ]; then
    for log in "$work"/*.log "$work"/cluster/slurm-*.log; do
      [ -f "$log" ] && { echo "--- $log"; tail -n 20 "$log"; }
    done >&2
  fi
  rm -rf "$work"
}
trap on_exit EXIT

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.2
  done
}

# A pid file, read at once (the daemons delete theirs when they exit).
read_pid() { wait_for 20 test -s "$1" && cat "$1"; }

say "building the release binary the array tasks run"
cargo build -q -p xtask --release
xtask=$repo/target/release/xtask

# munge, on its own socket.
mkdir -m 755 "$work/munge"
mungekey --create --keyfile="$work/munge/key" --bits=1024
chmod 400 "$work/munge/key"
munged --force --key-file "$work/munge/key" --socket "$work/munge/socket" \
  --pid-file "$work/munge/munged.pid" --log-file "$work/munged.log" --seed-file "$work/munge/seed"
daemons+=("$(read_pid "$work/munge/munged.pid")")

host=$(hostname -s)
mkdir -p "$work/state" "$work/spool"
cat > "$work/slurm.conf" <<EOF
ClusterName=emofuse
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge/socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MailProg=/bin/true
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
NodeName=emofuse NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=emofuse Nodes=emofuse Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$work/slurm.conf

slurmctld -f "$SLURM_CONF"
daemons+=("$(read_pid "$work/slurmctld.pid")")
slurmd -f "$SLURM_CONF" -N emofuse
daemons+=("$(read_pid "$work/slurmd.pid")")
node_idle() { [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]; }
wait_for 60 node_idle || fail "the node never became idle"
say "one-node cluster up ($(sinfo -h -o '%P %D %T %c CPUs'))"

# The grid: 2 subjects × (EEG-only + audio-only + concat) × 1 seed = 6 jobs, long enough (a few seconds per task) for
# a task to be caught running.
"$xtask" synth --out "$work/tree" --subjects 2 --trials 40 >/dev/null
grid=(--data-dir "$work/tree" --fusion-modes concat --scales on --seeds 1 --epochs 6)
"$xtask" sweep "${grid[@]}" --out "$work/whole" >/dev/null
"$xtask" sweep "${grid[@]}" --out "$work/cluster" --emit-slurm "$work/sweep.sbatch" --shards 2 \
  --cpus-per-task 1 --time 00:10:00 >/dev/null

merge_and_compare() {
  "$xtask" report "$work"/cluster/shard-* --out "$work/merged" >/dev/null
  cmp "$work/whole/results.csv" "$work/merged/results.csv" ||
    fail "$1: the merged shards differ from the unsharded sweep"
  [ "$(wc -l < "$work/merged/results.csv")" = 7 ] || fail "$1: expected 6 jobs"
}

say "sbatch --wait: 2 array tasks"
timeout 600 sbatch --wait --quiet "$work/sweep.sbatch" || fail "the job array did not finish cleanly"
merge_and_compare "first submission"
say "merged shards equal the unsharded sweep"

# Resilience: cancel task 2 mid-run, submit the same script again.
rm -rf "$work/cluster" "$work/merged"
mkdir -p "$work/cluster"
job=$(sbatch --parsable "$work/sweep.sbatch")
job=${job%%;*}
task_running() { squeue -h -j "${job}_2" -t RUNNING -o %i 2>/dev/null | grep -q . ; }

wait_for 120 task_running || fail "array task 2 never started"
# Mid-run: once it has started training (its training-state folder appears when training starts).
wait_for 120 test -d "$work/cluster/shard-2/state" || fail "array task 2 never started training"
scancel "${job}_2"
queue_empty() { [ -z "$(squeue -h -j "$job" 2>/dev/null)" ]; }
wait_for 300 queue_empty || fail "the cancelled array never left the queue"
# The task may be cancelled before it created its folder.
cancelled_jobs=$( (find "$work/cluster/shard-2/jobs" -name '*.json' 2>/dev/null || true) | wc -l)
grep -q CANCELLED "$work/cluster/slurm-${job}_2.log" || fail "task 2 finished before it could be cancelled"
say "task 2 cancelled with $cancelled_jobs of its jobs recorded; resubmitting"
timeout 600 sbatch --wait --quiet "$work/sweep.sbatch" || fail "the resubmitted array did not finish cleanly"
merge_and_compare "after a cancelled task"
say "after a cancelled task and a resubmission, merged shards still equal the unsharded sweep"
say "passed"
