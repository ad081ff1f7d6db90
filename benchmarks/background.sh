#!/usr/bin/env bash
# Run a leaderboard in the background for days: from a worktree pinned to one commit, at the
# lowest CPU priority, resumable, and restartable with the same command.
#
#   benchmarks/background.sh start  [--commit REV] [--name NAME] -- LEADERBOARD ARGS...
#   benchmarks/background.sh status [--name NAME]
#   benchmarks/background.sh stop   [--name NAME] [--wait]
#
# start   creates (or reuses) the worktree ../lttoolbox-bg-NAME detached at REV (default HEAD),
#         and starts `nice -n 19 python benchmarks/leaderboard.py ARGS` there with nohup,
#         importing the worktree's lttoolbox (not the installed checkout). Give the runs a folder
#         outside every worktree (--out ../runs/...), so that a new pin finds them. Refused while
#         the same NAME runs. Each run gets one thread unless ARGS say otherwise.
# status  says whether it runs, its pin, and the runner's last lines.
# stop    sends SIGTERM: the running runs checkpoint at their next step and stop; the same
#         start command continues them (the leaderboard skips finished runs and resumes the rest).
#         With --wait it returns once the runner has exited (at most 10 minutes), so that what
#         follows (leaderboard.py --report-only --pack-unfinished, a new start) sees the runs
#         as they stopped.
#
# The log is ../lttoolbox-bg-NAME.log, the pid ../lttoolbox-bg-NAME.pid (beside the worktree).
# See docs/leaderboard_guide.md, "A long table in the background".
set -euo pipefail

cmd=${1:-}; shift || true
commit=HEAD
name=paper
wait_exit=0
while [ $# -gt 0 ]; do
  case "$1" in
    --commit) commit=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --wait) wait_exit=1; shift ;;
    --) shift; break ;;
    *) echo "background.sh: unknown option '$1' (options before --: --commit REV, --name NAME, --wait)" >&2; exit 2 ;;
  esac
done
case "$name" in *[!A-Za-z0-9_.-]*|"") echo "background.sh: --name must be letters, digits, '_', '-' or '.'" >&2; exit 2 ;; esac

repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
parent=$(dirname "$repo")
tree="$parent/lttoolbox-bg-$name"
log="$tree.log"
pidfile="$tree.pid"

# Alive and not a zombie (an orphan that nobody reaped still answers kill -0).
running() {
  local state
  [ -f "$pidfile" ] && state=$(ps -o stat= -p "$(cat "$pidfile")" 2>/dev/null) \
    && [ -n "$state" ] && [ "${state#Z}" = "$state" ]
}

case "$cmd" in
  start)
    [ $# -gt 0 ] || { echo "background.sh start: give the leaderboard's arguments after --" >&2; exit 2; }
    if running; then
      echo "background.sh: '$name' is running (pid $(cat "$pidfile")); stop it first" >&2; exit 1
    fi
    rev=$(git -C "$repo" rev-parse --verify -q "$commit^{commit}" 2>/dev/null) \
      || { echo "background.sh: --commit $commit is not a commit" >&2; exit 2; }
    if [ -d "$tree" ]; then
      if [ -n "$(git -C "$tree" status --porcelain --untracked-files=no)" ]; then
        echo "background.sh: $tree has changes; commit or remove them first" >&2; exit 1
      fi
      git -C "$tree" checkout -q --detach "$rev"
    else
      git -C "$repo" worktree add -q --detach "$tree" "$rev"
    fi
    threads=()
    case " $* " in *" --threads-per-job "*) ;; *) threads=(--threads-per-job 1) ;; esac
    {
      echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) start at $(git -C "$tree" rev-parse --short HEAD): $*"
    } >>"$log"
    cd "$tree"
    # The runner itself is the background job (its pid is the one stop signals), with no tie to
    # this shell's terminal or pipes.
    PYTHONPATH="$tree" nohup nice -n 19 python benchmarks/leaderboard.py "$@" "${threads[@]}" \
        </dev/null >>"$log" 2>&1 &
    echo $! >"$pidfile"
    echo "started '$name' (pid $(cat "$pidfile")) at $(git -C "$tree" rev-parse --short HEAD); log: $log"
    ;;
  status)
    if running; then
      echo "'$name' is running (pid $(cat "$pidfile")), pinned at $(git -C "$tree" rev-parse --short HEAD)"
    else
      echo "'$name' is not running"
    fi
    [ -f "$log" ] && tail -n 5 "$log"
    ;;
  stop)
    if running; then
      kill -TERM "$(cat "$pidfile")"
      echo "asked '$name' (pid $(cat "$pidfile")) to stop; its runs keep their checkpoints"
      if [ "$wait_exit" = 1 ]; then
        for _ in $(seq 1200); do running || break; sleep 0.5; done
        if running; then
          echo "background.sh: '$name' (pid $(cat "$pidfile")) still runs after 10 minutes" >&2; exit 1
        fi
        echo "'$name' has stopped"
      fi
    else
      echo "'$name' is not running"
    fi
    ;;
  *)
    echo "usage: benchmarks/background.sh start|status|stop [--commit REV] [--name NAME] [--wait] [-- LEADERBOARD ARGS]" >&2
    exit 2
    ;;
esac
