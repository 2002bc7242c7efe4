# sse_util.sh: shell helpers for tests that stream OpenAI completions; sourced, not run.
# sse_text FILE: the concatenated text deltas of an SSE response body; fails (exit status 1, reason on
# stderr) on an error event, a finish_reason other than length, or a missing [DONE].
sse_text() {
  python3 - "$1" <<'PY'
import json, sys
text, done = [], False
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.strip()
    if not line.startswith("data: "): continue
    data = line[6:]
    if data == "[DONE]": done = True; continue
    ev = json.loads(data)
    if "error" in ev: sys.exit("error event: " + data)
    for ch in ev["choices"]:
        text.append(ch.get("text") or "")
        if ch.get("finish_reason") not in (None, "length"): sys.exit("finish_reason " + str(ch["finish_reason"]))
if not done: sys.exit("no [DONE]")
sys.stdout.write("".join(text))
PY
}

# streams_begun N TRIES PREFIX: waits (10 ms a try, at most TRIES) until N of the files PREFIX* have a text delta
# (the files are listed again at every try: background clients may not have created theirs yet); prints how many
streams_begun() {
  local n=$1 tries=$2 prefix=$3 begun=0
  for _ in $(seq 1 "$tries"); do
    begun=$(grep -l '"text":"[^"]' "$prefix"* 2>/dev/null | wc -l)
    [ "$begun" -eq "$n" ] && break
    sleep 0.01
  done
  echo "$begun"
}

# busiest_worker URL: the worker the coordinator at URL sees running the most requests (its Events stream),
# worker-0 when none is
busiest_worker() {
  local v
  v=$(curl -s "$1/metrics" | awk -F'[{}"= ]+' '/^strata:worker_running\{/ && $NF > max {max = $NF; v = $3} END {print v}')
  echo "${v:-worker-0}"
}
