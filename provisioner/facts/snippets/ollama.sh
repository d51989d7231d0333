# --- provision verify: the tags an Ollama server lists (lines prefixed "@modeldir ") ---
# Input: MODEL_OLLAMA_HOST (host:port of the server). Parser: provisioner/facts/model_files.py
if command -v ollama >/dev/null 2>&1; then
    ol_out=$(OLLAMA_HOST="$MODEL_OLLAMA_HOST" ollama list 2>&1)
    printf '@modeldir ollama present %s\n' "$?"
    printf '%s\n' "$ol_out" | sed 's/^/@modeldir ollama-line |/'
    ol_out=
else
    echo '@modeldir ollama missing'
fi
