#!/bin/bash
# A private one-node SLURM cluster on this machine, for tests (Debian 12, SLURM 22.05, as root).
#
#   tests/slurm/cluster.sh install   # apt-get install slurmctld slurmd slurm-client munge (if missing)
#   tests/slurm/cluster.sh start     # write a config under $SLURM_TEST_DIR, start munged/slurmctld/slurmd
#   tests/slurm/cluster.sh env       # print "export SLURM_CONF=..." for clients (sbatch, squeue, ...)
#   tests/slurm/cluster.sh stop      # cancel all jobs, stop every daemon this script started (by pid)
#
# Everything lives in $SLURM_TEST_DIR (default /tmp/hpcpot-slurm-test): etc/slurm.conf, state/,
# spool/, log/, run/ (pid files).  Nothing is written to /etc/slurm.  Clients need
# SLURM_CONF=$SLURM_TEST_DIR/etc/slurm.conf; jobs inherit it through sbatch's default --export=ALL.
# Ports can be moved with SLURM_TEST_CTLD_PORT / SLURM_TEST_SLURMD_PORT (defaults 6817 / 6818).
# See /work/shared/notes/slurm-on-one-node.md for how this was worked out.
set -u

DIR=${SLURM_TEST_DIR:-/tmp/hpcpot-slurm-test}
CONF=$DIR/etc/slurm.conf
RUN=$DIR/run
LOG=$DIR/log
CTLD_PORT=${SLURM_TEST_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_TEST_SLURMD_PORT:-6818}
START_TIMEOUT=${SLURM_TEST_START_TIMEOUT:-60}
export SLURM_CONF=$CONF

say() { echo "cluster.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

have_binaries() {
    local b
    for b in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/bin/sbatch /usr/bin/srun /usr/bin/munge; do
        [ -x "$b" ] || return 1
    done
    compgen -G "/usr/lib/*/slurm-wlm/mpi_pmi2.so" >/dev/null
}

cmd_install() {
    if have_binaries; then
        say "slurm and munge are already installed"
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "install needs root"
    command -v apt-get >/dev/null || die "apt-get not found"
    export DEBIAN_FRONTEND=noninteractive
    # --no-install-recommends skips the slurm-wlm-*-plugin(-dev) recommends; the Depends still
    # bring slurm-wlm-basic-plugins (mpi_pmi2.so, auth/cred munge, linuxproc, cons_tres).
    apt-get update -q && apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge ||
        die "apt-get install failed"
    have_binaries || die "installed, but slurm/munge binaries or mpi_pmi2.so are missing"
}

# pid alive and its command name is what we expect (guards against reused pids)
alive() { # pid name
    [ -n "$1" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

pid_of() { cat "$RUN/$1.pid" 2>/dev/null; }

stop_pid() { # name  (SIGTERM, wait up to 15 s, then SIGKILL)
    local name=$1 pid
    pid=$(pid_of "$name")
    if alive "$pid" "$name"; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 150); do alive "$pid" "$name" || break; sleep 0.1; done
        if alive "$pid" "$name"; then
            say "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null
            sleep 0.2
        fi
        say "stopped $name (pid $pid)"
    fi
    rm -f "$RUN/$name.pid"
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc --all)  # --all: plain nproc obeys OMP_NUM_THREADS, which callers may have set to 1
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    # Job ids that differ between cluster starts: MPICH names its /dev/shm segments after the
    # PMI job (id.step), and a killed job leaves its segment behind; with ids restarting at 1
    # every start, a later job 2 attached to that stale segment and died in MPI_Init ("UCX
    # failed to unpack address") in every run that followed.
    first_job=$(( ($(date +%s) % 3000000) * 20 + 100 ))
    cat >"$CONF" <<EOF
# minimal one-node cluster on localhost (written by tests/slurm/cluster.sh)
ClusterName=hpcpottest
FirstJobId=$first_job
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# the job credential lifetime, which is also how long a requeued job waits before it may start
# again (default 120 s); short here so that the requeue test sees the job come back quickly
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.daemon.pid
SlurmdPidFile=$RUN/slurmd.daemon.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

cmd_start() {
    [ "$(id -u)" = 0 ] || die "start needs root"
    have_binaries || die "slurm/munge are not installed (run: $0 install)"
    if alive "$(pid_of slurmctld)" slurmctld || alive "$(pid_of slurmd)" slurmd; then
        die "a cluster from $DIR is already running (run: $0 stop)"
    fi
    mkdir -p "$DIR"/{etc,state,spool,log,run,jobs}
    write_conf

    # munged: in the foreground as user munge; the key comes from the Debian postinst
    if munge_ok; then
        say "munged is already running (not started by this script); using it"
    else
        [ -r /etc/munge/munge.key ] || die "/etc/munge/munge.key missing"
        mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
        nohup runuser -u munge -- /usr/sbin/munged -F >"$LOG/munged.out" 2>&1 &
        local rpid=$! mpid=""
        for _ in $(seq 100); do
            mpid=$(pgrep -P "$rpid" -x munged 2>/dev/null | head -n1)
            [ -n "$mpid" ] && munge_ok && break
            sleep 0.1
        done
        [ -n "$mpid" ] && munge_ok || { kill -TERM "$rpid" 2>/dev/null; cat "$LOG/munged.out" >&2; die "munged did not start"; }
        echo "$mpid" >"$RUN/munged.pid"
        say "started munged (pid $mpid)"
    fi

    nohup /usr/sbin/slurmctld -D -f "$CONF" >"$LOG/slurmctld.out" 2>&1 &
    echo $! >"$RUN/slurmctld.pid"
    nohup /usr/sbin/slurmd -D -f "$CONF" >"$LOG/slurmd.out" 2>&1 &
    echo $! >"$RUN/slurmd.pid"
    say "started slurmctld (pid $(pid_of slurmctld)) and slurmd (pid $(pid_of slurmd))"

    local t0=$SECONDS state=""
    while [ $((SECONDS - t0)) -lt "$START_TIMEOUT" ]; do
        state=$(sinfo -h -o %T 2>/dev/null | head -n1)
        [ "$state" = idle ] && break
        if ! alive "$(pid_of slurmctld)" slurmctld || ! alive "$(pid_of slurmd)" slurmd; then
            break
        fi
        sleep 0.2
    done
    if [ "$state" != idle ]; then
        say "the node did not become idle (state '$state'); logs:"
        tail -n 30 "$LOG"/slurmctld.log "$LOG"/slurmd.log "$LOG"/*.out >&2 2>/dev/null
        cmd_stop
        exit 1
    fi
    say "cluster up: $(sinfo -h -o '%P %D %T %c' | head -n1); export SLURM_CONF=$CONF"
}

cmd_stop() {
    # cancel every job first, or their slurmstepd would outlive slurmd
    if alive "$(pid_of slurmctld)" slurmctld; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null
            # default squeue states: pending, running, completing, ... (not finished ones)
            for _ in $(seq 300); do
                [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
                sleep 0.1
            done
        fi
    fi
    stop_pid slurmd
    stop_pid slurmctld
    stop_pid munged
    rmdir /run/munge 2>/dev/null || true
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *)
        echo "usage: $0 install|start|stop|env   (scratch dir: \$SLURM_TEST_DIR, default /tmp/hpcpot-slurm-test)" >&2
        exit 2
        ;;
esac
