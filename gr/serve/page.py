"""The search page served at `/`: one query box, the ranked documents below.

Plain HTML and JavaScript, no external assets. `/?q=text` fills the box and
searches at once (handy for links, and for the headless-browser test). The
results are an <ol id="results"> of <li class="hit" data-doc-id="...">;
every value from the server is set with textContent, never as HTML.

The page runs under a Content-Security-Policy (HEADERS) that allows its one
script and its one style sheet by their sha256 hashes and nothing else
inline: no event-handler attributes, no style attributes, no eval; fetch
only from its own origin; never framed.
"""

import base64
import hashlib


STYLE = """
 body { font-family: sans-serif; max-width: 46em; margin: 2em auto; }
 input[type=search] { width: 70%; font-size: 1.1em; }
 .score, .docid { color: #666; font-size: 0.85em; margin-left: 0.6em; }
 #status { color: #a00; }
 #k { width: 4em; }
"""

SCRIPT = """
"use strict";
const form = document.getElementById("search-form");
const queryBox = document.getElementById("query");
const kBox = document.getElementById("k");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");

function span(cls, text) {
  const el = document.createElement("span");
  el.className = cls;
  el.textContent = text;
  return el;
}

function show(hits) {
  results.replaceChildren();
  for (const hit of hits) {
    const li = document.createElement("li");
    li.className = "hit";
    li.dataset.docId = hit.doc_id;
    const name = document.createElement("b");
    name.textContent = hit.title || hit.doc_id;
    li.append(name, span("docid", hit.doc_id + " [" + hit.docid + "]"),
              span("score", hit.score.toFixed(3)));
    results.append(li);
  }
  statusLine.textContent = hits.length ? "" : "no documents";
}

async function search(query, k) {
  statusLine.textContent = "searching...";
  const response = await fetch("/search", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({query: query, k: k})});
  const body = await response.json();
  if (!response.ok) {
    results.replaceChildren();
    statusLine.textContent = "error " + response.status + ": " +
        JSON.stringify(body.detail);
    return;
  }
  show(body.hits);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  search(queryBox.value, parseInt(kBox.value, 10) || 10);
});

const initial = new URLSearchParams(window.location.search).get("q");
if (initial) {
  queryBox.value = initial;
  form.requestSubmit();
}
"""

# The page around its style sheet and script (no % of its own).
_LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gr search</title>
<style>%(style)s</style>
</head>
<body>
<h1>gr: generative retrieval</h1>
<form id="search-form">
 <input type="search" id="query" name="q" placeholder="query" autofocus required>
 <input type="number" id="k" name="k" value="10" min="1">
 <button type="submit" id="go">Search</button>
</form>
<p id="status"></p>
<ol id="results"></ol>
<script>%(script)s</script>
</body>
</html>
"""

PAGE_HTML = _LAYOUT % {"style": STYLE, "script": SCRIPT}


def _source_hash(source: str) -> str:
  """A CSP source expression allowing exactly this inline element."""
  digest = hashlib.sha256(source.encode("utf-8")).digest()
  return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


CONTENT_SECURITY_POLICY = "; ".join(
  [
    "default-src 'none'",
    f"script-src {_source_hash(SCRIPT)}",
    f"style-src {_source_hash(STYLE)}",
    "connect-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
  ]
)
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY}
