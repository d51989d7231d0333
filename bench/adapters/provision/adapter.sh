#!/usr/bin/env bash
# Adapter for ../shared/bench-peers (see its README for the contract):
#   adapter.sh install | version | apply N VARS | check N VARS | reset
# The workload is expressed as a user would: a profile whose `files:` are the
# fixture templates, `vars:` the fixture variables, one custom handler that
# every file notifies, and an inventory of N hosts, each with its target root.
# `builtin_files: false` keeps provision's own LLM files out of the bench tree,
# and each host's state dir sits beside its root so check.sh sees only the 7 files.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
W=${BENCH_WORK:?}/provision
VENV=$BENCH_WORK/venv-provision
# The openssh transport's masters live here (short: a socket path must fit in 108
# bytes), so that reset finds and stops them. PROVISION_TRANSPORT=fabric|openssh
# from the caller picks the transport (default: openssh, ssh being installed).
RUN=/tmp/bench-provision-run
[[ -d $RUN ]] || mkdir -m 0700 "$RUN"
export XDG_RUNTIME_DIR=$RUN
# the harness's sshds listen on 127.0.0.(10+i):2222 with targets /tmp/bench-root-<i>; a copy of
# the harness run beside another one moves both (the same two values in its other adapters)
PORT=${BENCH_SSH_PORT:-2222}
TARGETS=${BENCH_TARGET_PREFIX:-/tmp/bench-root-}

write_inputs() {  # write_inputs N VARS -> $W/profile.yaml and $W/inventory.yaml
  # A user writes the profile once; the adapter writes it again only when the fixture
  # (variables, manifest, templates) changed, as a user would edit it.
  local n=$1 vars=$2 stamp
  mkdir -p "$W"
  {
    echo "hosts:"
    for i in $(seq 1 "$n"); do
      echo "  h$i: {address: 127.0.0.$((10 + i)), port: $PORT, user: root, key: ${BENCH_SSH_KEY:?}, root: $TARGETS$i, state_dir: ${TARGETS/root/state}$i, profile: $W/profile.yaml}"
    done
  } > "$W/inventory.yaml"
  stamp=$(cat "$vars" "$BENCH_FIXTURES/manifest.yml" "$BENCH_FIXTURES"/templates/* | sha256sum | cut -c1-64)
  [[ -f $W/profile.stamp && $(cat "$W/profile.stamp") == "$stamp" ]] && return 0
  rm -rf "$W/templates" && cp -r "${BENCH_FIXTURES:?}/templates" "$W/templates"
  "$VENV/bin/python" - "$vars" "$BENCH_FIXTURES/manifest.yml" "$W/profile.yaml" <<'PY'
import sys, yaml
variables = yaml.safe_load(open(sys.argv[1]))
manifest = yaml.safe_load(open(sys.argv[2]))
profile = {
    "apiVersion": "provision/v1", "kind": "MachineProfile",
    "metadata": {"name": "bench", "description": "bench-peers workload: 7 templated files"},
    # The model sections are validated as always; nothing of them is installed.
    "hardware": {"gpus": [], "ram": "64GiB", "memory": {"type": "ddr5-5600", "channels": 2},
                 "cpu": {"cores": 8}},
    "model": {"id": "llama-3.1-8b", "quant": "Q4_K_M", "context": 8192,
              "source": {"files": [{"path": "/srv/models/llama-3.1-8b-q4_k_m.gguf", "bytes": 4920734656,
                                    "sha256": "a" * 64}]}},
    "runtime": {"engine": "llama.cpp", "version": "b11312"},
    "builtin_files": False,
    "vars": variables,
    "files": [{"template": "templates/" + f["src"], "dest": "/" + f["dest"], "mode": f["mode"],
               "notify": ["bench-handler"]} for f in manifest["managed_files"]],
    "handlers": {"bench-handler": {"command": 'echo changed >> "$PROVISION_ROOT/handler.log"'}},
}
yaml.safe_dump(profile, open(sys.argv[3], "w"), sort_keys=False)
PY
  echo "$stamp" > "$W/profile.stamp"
}

case ${1:-} in
  install)
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    # the checkout as it is now (a copy, not editable: the benchmark measures an installed tool)
    "$VENV/bin/pip" install -q "$REPO" && "$VENV/bin/pip" install -q --force-reinstall --no-deps "$REPO" ;;
  version) echo "provision $("$VENV/bin/provision" --version | awk '{print $NF}')" ;;
  apply)
    write_inputs "$2" "$3"
    "$VENV/bin/provision" apply -i "$W/inventory.yaml" --known-hosts "${BENCH_KNOWN_HOSTS:?}" --forks 20 --yes ;;
  check)
    write_inputs "$2" "$3"
    out=$(mktemp); trap 'rm -f "$out"' EXIT
    set +e
    "$VENV/bin/provision" plan -i "$W/inventory.yaml" --known-hosts "$BENCH_KNOWN_HOSTS" 2>&1 | tee "$out"
    set -e
    files=$(grep -oP '^  [~+-] /\K\S+' "$out" | sort -u | tr '\n' ' ' || true)
    handler=$(grep -q 'handlers that will run: .*bench-handler' "$out" && echo handler || true)
    echo "BENCH_PENDING: $files$handler" ;;
  reset)  # stop the SSH masters of the openssh transport, so the next run starts cold (not timed)
    for s in "$RUN"/provision-ssh/*; do [[ -S $s ]] && ssh -o ControlPath="$s" -O exit bench 2>/dev/null || true; done ;;
  *) echo "usage: $0 install|version|apply N VARS|check N VARS|reset" >&2; exit 2 ;;
esac
