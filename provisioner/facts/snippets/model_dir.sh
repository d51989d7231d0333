# --- provision verify: a model directory (lines prefixed "@modeldir ") ---
# Inputs: MODEL_ROOT (the tree managed as /, "" for the host's /), MODEL_DIR (the directory as
# the profile names it), MODEL_GGUF (a GGUF file inside it that llama.cpp loads, or "").
# b64() comes from the gather script (snippets/gather.sh); parser: provisioner/facts/model_files.py
md="$MODEL_ROOT$MODEL_DIR"
if [ -d "$md" ]; then
    printf '@modeldir dir %s present\n' "$(b64 "$MODEL_DIR")"
    for mf in config.json model.safetensors.index.json; do
        case $mf in config.json) mk=config ;; *) mk=index ;; esac
        if [ -f "$md/$mf" ]; then
            printf '@modeldir %s %s\n' "$mk" "$(base64 < "$md/$mf" | tr -d '\n')"
        else
            printf '@modeldir %s missing\n' "$mk"
        fi
    done
    for mf in "$md"/*.safetensors; do
        [ -f "$mf" ] || continue
        printf '@modeldir file %s %s\n' "$(b64 "${mf##*/}")" "$(stat -c '%s' "$mf")"
    done
else
    printf '@modeldir dir %s missing\n' "$(b64 "$MODEL_DIR")"
fi
if [ -n "$MODEL_GGUF" ]; then
    if [ -f "$md/$MODEL_GGUF" ]; then
        printf '@modeldir gguf %s %s\n' "$(b64 "$MODEL_GGUF")" "$(stat -c '%s' "$md/$MODEL_GGUF")"
    else
        printf '@modeldir gguf %s missing\n' "$(b64 "$MODEL_GGUF")"
    fi
fi
