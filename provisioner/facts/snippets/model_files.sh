# --- provision verify: size and sha256 of the model's files (lines prefixed "@model ") ---
# Inputs: MODEL_ROOT (the tree managed as /, "" for the host's /), MODEL_FILES (the files as
# the profile names them, one a line), MODEL_STATE (provision's state dir: the hash cache).
# b64() comes from the gather script (snippets/gather.sh); parser: provisioner/facts/model_files.py
model_cache="$MODEL_STATE/sha256-cache"
mkdir -p "$MODEL_STATE" 2>/dev/null || true
printf '%s\n' "$MODEL_FILES" | while IFS= read -r rel; do
    [ -n "$rel" ] || continue
    p="$MODEL_ROOT$rel"
    if [ -f "$p" ]; then
        size=$(stat -c '%s' "$p"); mtime=$(stat -c '%Y' "$p")
        sum=$(awk -v s="$size" -v m="$mtime" -v p="$p" '$1 == s && $2 == m && $3 == p {print $4}' \
            "$model_cache" 2>/dev/null | tail -n 1)
        if [ -z "$sum" ]; then
            sum=$(sha256sum < "$p" | cut -c1-64)
            printf '%s %s %s %s\n' "$size" "$mtime" "$p" "$sum" >> "$model_cache" 2>/dev/null || true
        fi
        printf '@model %s %s %s\n' "$(b64 "$rel")" "$size" "$sum"
    else
        printf '@model %s missing\n' "$(b64 "$rel")"
    fi
done
