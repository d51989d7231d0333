# --- provision: the gather script (its @fact, @path and @state lines: facts/gather.py) ---
# Inputs, set before this text: GATHER_ROOT (the tree managed as /, "" for the host's /),
# GATHER_STATE (provision's state dir), GATHER_SERVICE (the model server's unit, "" for none),
# GATHER_PATHS (the paths to read, blank-separated: provision refuses blanks and quotes in them).
# The snippets of the probes that ride along follow this text, then the end mark "@done".
set -u
LC_ALL=C
export LC_ALL
root=$GATHER_ROOT
state=$GATHER_STATE
server_unit=$GATHER_SERVICE
fact() { printf '@fact %s %s\n' "$1" "$2"; }
b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
fact mem_total_kb "$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)"
fact cpus "$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0)"
fact kernel "$(uname -r)"
fact arch "$(uname -m)"
if [ -r /etc/os-release ]; then
    # shellcheck source=/dev/null # the host's file, read for ID and VERSION_ID
    fact distro "$(. /etc/os-release && printf '%s %s' "${ID:-unknown}" "${VERSION_ID:-}")"
fi
if command -v systemctl >/dev/null 2>&1; then
    fact systemd "$(systemctl --version 2>/dev/null | awk 'NR==1 {print $2}')"
fi
if [ -d /run/systemd/system ]; then fact init systemd; else fact init other; fi
if command -v getenforce >/dev/null 2>&1; then fact selinux "$(getenforce 2>/dev/null)"; else fact selinux absent; fi
if [ -r /proc/driver/nvidia/version ]; then
    fact nvidia_driver "$(sed -n 's/.*Kernel Module[^0-9]*\([0-9][0-9.]*\).*/\1/p' \
        /proc/driver/nvidia/version | head -n 1)"
    if grep -q 'Open Kernel Module' /proc/driver/nvidia/version; then
        fact nvidia_module open
    else
        fact nvidia_module proprietary
    fi
else
    fact nvidia_driver none
fi
fact root "$(b64 "$root")"
# guard() (defined before this snippet): a symlinked folder or state file under the root is reported
for f in "$state" "$state/generations" "$state/last" "$state/lock" "$state/lock.pid" "$state/last.new" \
        "$state/pending-handlers" "$state/pending.new"; do
    guard "$f" state
done
files=""
emit() {
    # Classify one path. Regular files are only collected here and read below in
    # one stat, one sha256sum and one cat for all of them: forks are the cost.
    p=$1
    guard "$p"
    for t in "${p%/*}"/.*.provision-new-*; do
        if [ -e "$t" ] || [ -L "$t" ]; then printf '@temp %s\n' "$t"; fi
    done
    if [ -L "$p" ]; then
        printf '@path symlink %s %s\n' "$(b64 "$(readlink "$p")")" "$p"
    elif [ -f "$p" ]; then
        files="$files $p"
    elif [ -d "$p" ]; then
        printf '@path dir - %s\n' "$p"
    elif [ -e "$p" ]; then
        printf '@path other - %s\n' "$p"
    else
        printf '@path missing - %s\n' "$p"
    fi
}
# shellcheck disable=SC2086 # the paths hold no blanks (provision checks them)
for p in $GATHER_PATHS; do
    emit "$p"
done
if [ -r "$state/last" ]; then
    last=$(cat "$state/last")
    printf '@state last %s\n' "$last"
    gen="$state/generations/$last"
    if [ -r "$gen/manifest.json" ]; then
        printf '@state manifest %s\n' "$(base64 < "$gen/manifest.json" | tr -d '\n')"
    fi
    if [ -r "$gen/paths" ]; then
        # the files the last generation installed: a profile that dropped one deletes it
        while IFS= read -r rel; do
            if [ -n "$rel" ]; then emit "$root$rel"; fi
        done < "$gen/paths"
    fi
    if [ -d "$gen" ] && [ ! -e "$gen/complete" ]; then
        # killed after it was recorded: the deletions it owed may not have happened
        echo '@state incomplete'
        if [ -r "$gen/deletes" ]; then
            while IFS= read -r rel; do
                if [ -n "$rel" ]; then printf '@state delete %s\n' "$rel"; emit "$root$rel"; fi
            done < "$gen/deletes"
        fi
    fi
else
    echo '@state last 0'
fi
if [ -r "$state/pending-handlers" ]; then
    printf '@state pending %s\n' "$(tr '\n' ' ' < "$state/pending-handlers")"
fi
if [ -n "$files" ]; then
    # shellcheck disable=SC2086 # the paths hold no blanks (provision checks them)
    set -- $files
    stat -c '@stat %a %U %G %s %n' "$@"
    sha256sum "$@" | sed 's/^/@sum /'
    echo '@blob'
    cat "$@" | base64
    echo '@blob-end'
fi
if [ -z "$root" ] && [ -n "$server_unit" ] && [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet "$server_unit.service"; then fact server_active yes; else fact server_active no; fi
    if systemctl is-enabled --quiet "$server_unit.service"; then fact server_enabled yes; else fact server_enabled no; fi
else
    fact server_active no
fi
