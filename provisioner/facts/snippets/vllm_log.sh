# --- the vLLM server's start-up lines (facts/vllm_log.py) ---
# vLLM logs the KV cache pool it sized from the memory it found (vllm/v1/worker/gpu_worker.py,
# vllm/v1/core/kv_cache_utils.py): read them from the journal of the unit's current run
# (or its last, when it failed), not from earlier runs with other settings. Only the lines
# before "Starting vLLM API server" (0.11.0; "Starting vLLM server" in 0.33.0) count: after
# it the server logs requests, whose text a client chooses; and only printable ASCII passes.
# parser: provisioner/facts/vllm_log.py; VLLM_UNIT: the model server's unit
vllm_unit=${VLLM_UNIT:?the model server unit}
vllm_lines='Available KV cache memory|KV cache size: |Maximum concurrency for|Model loading took|KV cache is needed|No available memory for the cache blocks'
if ! command -v journalctl >/dev/null 2>&1; then
    echo '@vllm-log none the host has no journalctl'
else
    vllm_run=$(systemctl show -p InvocationID --value "$vllm_unit" 2>/dev/null || true)
    if [ -z "$vllm_run" ]; then
        echo "@vllm-log none systemd has no run of $vllm_unit (not started since boot, or systemd older than 232)"
    elif [ -z "$(journalctl -q --no-pager -o cat -n 1 "_SYSTEMD_INVOCATION_ID=$vllm_run" 2>/dev/null)" ]; then
        echo "@vllm-log none no journal line of this run of $vllm_unit is readable by $(id -un) (none logged yet, or not in the systemd-journal group)"
    else
        journalctl -q --no-pager -o cat "_SYSTEMD_INVOCATION_ID=$vllm_run" 2>/dev/null \
            | awk '{ print } /Starting vLLM (API )?server/ { exit }' | LC_ALL=C tr -cd '\n -~' \
            | grep -E "$vllm_lines" | head -n 64 | sed 's/^/@vllm-log line /'
        echo "@vllm-log run $vllm_run"
        systemctl show -p ActiveState -p SubState -p NRestarts "$vllm_unit" 2>/dev/null \
            | LC_ALL=C tr -cd '\n -~' | sed 's/^/@vllm-log unit /'
    fi
fi
