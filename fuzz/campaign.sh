#!/usr/bin/env bash
# The fuzzing campaign: fuzz/campaign.sh [EXECS] runs each target for EXECS executions
# (default 10,000,000; libFuzzer's -runs=), one at a time under `nice -n 19`, from its
# committed corpus (fuzz/corpus/TARGET/) and the generated seeds (fuzz/seeds.py); then
# minimizes the corpus (`cargo fuzz cmin`, a set cover of the edges), measures the line
# coverage of the target's parser module (`cargo fuzz coverage`, then llvm-cov over the
# minimized corpus), and writes the target's row of fuzz/CAMPAIGN.md from what it measured.
# TARGETS="a b" picks targets (default all, fastest first); MAX_TIME=SECONDS stops each run
# sooner (its row says how many it ran); JOBS=N runs each target as N libFuzzer jobs at once
# (-jobs=N -workers=N, each EXECS/N executions, one shared corpus): its row sums their
# executions and rates, and its time is the whole run's;
# COVERAGE_ONLY=1 skips the runs: it minimizes the corpus as it stands and measures it.
# A crash stops that target (libFuzzer's artifact is under fuzz/artifacts/TARGET/, named in
# the row) and the campaign goes on with the next.
#
# Needs cargo-fuzz and llvm-tools for the toolchain (`rustup component add llvm-tools-preview`);
# runs on the stable toolchain without a sanitizer, as CI does. Other jobs may pause the fuzzer
# with SIGSTOP while they measure: wall time then includes the pause, CPU time does not.
set -euo pipefail
cd "$(dirname "$0")"

EXECS=${1:-10000000}
JOBS=${JOBS:-1}
TARGETS=${TARGETS:-"reply proxy data spool_scan recipients config session tls_session"}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN=$PWD/target/$TRIPLE/release
COVBIN=$PWD/target/$TRIPLE/coverage/$TRIPLE/release
LLVM=$(rustc --print sysroot)/lib/rustlib/$TRIPLE/bin
REPORT=CAMPAIGN.md
WORK=target/campaign
mkdir -p "$WORK"

# The parser module each target is for: the files whose line coverage is reported.
module() {
    case $1 in
        session) echo src/proto/ ;;
        data) echo src/proto/data.rs ;;
        tls_session) echo src/worker/tls.rs ;;
        proxy) echo src/proxy/ ;;
        reply) echo src/delivery/reply.rs ;;
        config) echo src/config/ ;;
        recipients) echo src/policy/recipients.rs ;;
        spool_scan) echo "src/spool/log/scan.rs src/spool/log/record.rs" ;;
        *) return 1 ;;
    esac
}

# Lines covered and lines (llvm-cov's executable lines) of the files under MODULE...
line_coverage() { # PROFDATA BINARY MODULE...
    local profdata=$1 binary=$2
    shift 2
    "$LLVM/llvm-cov" export -summary-only -instr-profile="$profdata" "$binary" |
        python3 -c '
import json, os, sys
root = os.path.dirname(os.getcwd()) + "/"
prefixes = [root + p for p in sys.argv[1:]]
covered = total = 0
for f in json.load(sys.stdin)["data"][0]["files"]:
    if any(f["filename"].startswith(p) for p in prefixes):
        covered += f["summary"]["lines"]["covered"]
        total += f["summary"]["lines"]["count"]
print(covered, total)
' "$@"
}

# Replaces the row of TARGET in the report's table (or adds it), keeping the others.
put_row() { # TARGET ROW
    local tmp
    tmp=$(mktemp)
    if [ ! -f "$REPORT" ]; then
        cat >"$REPORT" <<'EOF'
# Fuzzing campaign

Written by `fuzz/campaign.sh` from what it measured; each row is the target's last run.
Executions and exec/s are libFuzzer's final stats (`-print_final_stats=1`); time is wall
clock (it includes pauses by other jobs' SIGSTOP) and CPU time; the corpus is the committed
one after `cargo fuzz cmin`; coverage is llvm-cov's line coverage of the target's parser
module (its executable lines) over that minimized corpus, from `cargo fuzz coverage`.
Built on the stable toolchain without a sanitizer (`-s none`), run under `nice -n 19`.

| target | module | execs | wall s | CPU s | exec/s | corpus files | corpus KiB | lines covered / lines | crashes | run |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |
EOF
    fi
    awk -v t="| $1 |" -v row="$2" '
        index($0, t) == 1 { if (!done) print row; done = 1; next }
        { print }
        END { if (!done) print row }
    ' "$REPORT" >"$tmp"
    mv "$tmp" "$REPORT"
}

echo "campaign: building the targets (stable, -s none)"
nice -n 19 cargo fuzz build -s none -O
python3 seeds.py "$WORK/seeds"

# The row of TARGET from its measurements so far ($WORK/TARGET.run, .coverage).
row() {
    local t=$1 mod coverage="not measured"
    mod=$(module "$t")
    local files="?" kib="?"
    # shellcheck disable=SC1090
    source "$WORK/$t.run"
    if [ -f "$WORK/$t.corpus" ]; then
        # shellcheck disable=SC1090
        source "$WORK/$t.corpus"
    fi
    if [ -f "$WORK/$t.coverage" ]; then
        coverage=$(cat "$WORK/$t.coverage")
    fi
    echo "| $t | \`${mod// /\` \`}\` | $execs | $wall | $cpu | $rate | $files | $kib | $coverage | $crashes | $start |"
}

# First every target's run, then the minimized corpus and the coverage of each (an
# instrumented build of its own), so that build does not hold up the fuzzing; each phase
# writes the target's row with what is measured so far.
for t in $TARGETS; do
    [ -z "${COVERAGE_ONLY:-}" ] || break
    module "$t" >/dev/null
    mkdir -p "corpus/$t" "$WORK/seeds/$t" "artifacts/$t"
    rm -f "$WORK/$t.coverage" "$WORK/$t.corpus"
    log=$WORK/$t.log
    echo "campaign: $t, $EXECS executions${MAX_TIME:+ or $MAX_TIME s} (log: fuzz/$log)"
    start=$(date -u +%FT%TZ)
    # The run's own wall and CPU seconds, as bash's `time` measures the fuzzer. libFuzzer's
    # -timeout is wall clock, so a pause by another job's SIGSTOP would count as a hang: 600 s
    # lets such pauses pass and still ends a real hang (every target's unit takes < 1 s).
    TIMEFORMAT='%R %U %S'
    status=0
    runs=$EXECS
    jobs=()
    if [ "$JOBS" -gt 1 ]; then
        runs=$(((EXECS + JOBS - 1) / JOBS))
        jobs=(-jobs="$JOBS" -workers="$JOBS")
        rm -f fuzz-[0-9]*.log
    fi
    { time nice -n 19 "$BIN/$t" -runs="$runs" -max_total_time="${MAX_TIME:-0}" "${jobs[@]}" \
        -print_final_stats=1 -timeout=600 -artifact_prefix="artifacts/$t/" \
        "corpus/$t" "$WORK/seeds/$t" >"$log" 2>&1 || status=$?; } 2>"$WORK/$t.time"
    if [ "$JOBS" -gt 1 ]; then
        # Each job writes its own log (fuzz-N.log, in the working directory), and libFuzzer's
        # parent prints it into $log when the job exits: $log has every job's final stats once.
        rm -f fuzz-[0-9]*.log
    fi
    read -r wall user sys <"$WORK/$t.time"
    cpu=$(python3 -c "print(round($user + $sys))")
    # The sum over the jobs (one line each; a single run has one).
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{ s += $1 } END { if (NR) print s }')
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | awk '{ s += $1 } END { if (NR) print s }')
    crashes=0
    if [ "$status" -ne 0 ]; then
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        crashes="1: fuzz/${artifact:-$log (status $status)}"
        echo "campaign: $t failed (status $status): ${artifact:-see $log}"
    fi
    {
        echo "execs=${execs:-0} wall=${wall%.*} cpu=$cpu rate=${rate:-0}"
        echo "crashes=\"$crashes\" start=$start"
    } >"$WORK/$t.run"
    put_row "$t" "$(row "$t")"
    echo "campaign: $(row "$t")"
done

for t in $TARGETS; do
    mod=$(module "$t")
    # The smallest set of inputs that keeps every edge (set cover, without counter buckets:
    # with them the TOML parser alone keeps thousands of inputs, megabytes to commit).
    echo "campaign: $t minimizing the corpus"
    nice -n 19 cargo fuzz cmin -s none -O "$t" "corpus/$t" -- -set_cover_merge=1 -use_counters=0 \
        >"$WORK/$t.cmin.log" 2>&1
    files=$(find "corpus/$t" -type f | wc -l)
    kib=$(find "corpus/$t" -type f -printf "%s\n" | awk "{ s += \$1 } END { print int(s / 1024) }")
    echo "files=$files kib=$kib" >"$WORK/$t.corpus"
    echo "campaign: $t coverage of $mod"
    nice -n 19 cargo fuzz coverage -s none "$t" "corpus/$t" >"$WORK/$t.cov.log" 2>&1
    # shellcheck disable=SC2086
    read -r covered lines < <(line_coverage "coverage/$t/coverage.profdata" "$COVBIN/$t" $mod)
    pct=$(python3 -c "print(f'{100 * $covered / max($lines, 1):.1f}')")
    echo "$covered / $lines ($pct%)" >"$WORK/$t.coverage"
    put_row "$t" "$(row "$t")"
    echo "campaign: $(row "$t")"
done
