# --- the vLLM server's start-up lines (facts/vllm_log.py) ---
# vLLM logs the KV cache pool it sized from the memory it found (vllm/v1/worker/gpu_worker.py,
# vllm/v1/core/kv_cache_utils.py): read them from the journal of the unit's current run
# (or its last, when it failed), not from earlier runs with other settings.
# parser: provisioner/facts/vllm_log.py; VLLM_UNIT: the model server's unit
vllm_unit=${VLLM_UNIT:?the model server unit}
if ! command -v journalctl >/dev/null 2>&1; then
    echo '@vllm-log none the host has no journalctl'
else
    vllm_run=$(systemctl show -p InvocationID --value "$vllm_unit" 2>/dev/null || true)
    if [ -z "$vllm_run" ]; then
        echo "@vllm-log none $vllm_unit has not run since the host booted"
    elif [ -z "$(journalctl -q --no-pager -o cat -n 1 "_SYSTEMD_INVOCATION_ID=$vllm_run" 2>/dev/null)" ]; then
        echo "@vllm-log none no journal line of this run of $vllm_unit is readable by $(id -un) (none logged yet, or not in the systemd-journal group)"
    else
        journalctl -q --no-pager -o cat "_SYSTEMD_INVOCATION_ID=$vllm_run" 2>/dev/null \
            | grep -E 'Available KV cache memory|KV cache size: |Maximum concurrency for|Model loading took|KV cache is needed|No available memory for the cache blocks' \
            | tail -n 64 | sed 's/^/@vllm-log line /'
        echo "@vllm-log run $vllm_run"
    fi
fi
