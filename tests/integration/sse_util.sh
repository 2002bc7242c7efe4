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
