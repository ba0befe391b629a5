"""The search page served at `/`: one query box, the ranked documents below.

Plain HTML and JavaScript, no external assets. `/?q=text` fills the box and
searches at once (handy for links, and for the headless-browser test). The
results are an <ol id="results"> of <li class="hit" data-doc-id="...">;
every value from the server is set with textContent, never as HTML.
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gr search</title>
<style>
 body { font-family: sans-serif; max-width: 46em; margin: 2em auto; }
 input[type=search] { width: 70%; font-size: 1.1em; }
 .score, .docid { color: #666; font-size: 0.85em; margin-left: 0.6em; }
 #status { color: #a00; }
</style>
</head>
<body>
<h1>gr: generative retrieval</h1>
<form id="search-form">
 <input type="search" id="query" name="q" placeholder="query" autofocus required>
 <input type="number" id="k" name="k" value="10" min="1" style="width:4em">
 <button type="submit" id="go">Search</button>
</form>
<p id="status"></p>
<ol id="results"></ol>
<script>
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
</script>
</body>
</html>
"""
