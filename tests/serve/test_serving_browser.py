"""The search page (`/`) in headless Chromium: one query, ranked documents.

Needs Debian's chromium at /usr/bin/chromium (apt-get install chromium);
skipped cleanly where it is absent (CI installs only pip packages). The
page is opened as `/?q=...`, which fills the query box and submits the form
through the same handler a person's click uses; `--dump-dom` prints the DOM
once the page's fetch has finished (virtual time waits for the network).
"""

import html.parser
import os
import subprocess

import httpx
import pytest

from tests.serve import test_serving as run_helpers
from tests.serve import test_serving_http as http_helpers

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
  pytest.mark.browser,
  pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} not installed (apt-get install chromium)",
  ),
]


class HitCollector(html.parser.HTMLParser):
  """doc ids of <li class="hit" data-doc-id=...>, in page order."""

  def __init__(self):
    super().__init__()
    self.doc_ids = []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "li" and attrs.get("class") == "hit":
      self.doc_ids.append(attrs["data-doc-id"])


def test_page_shows_the_ranked_documents(tmp_path):
  model_dir = run_helpers.make_run(tmp_path / "run")
  retriever, server = http_helpers.start_service(model_dir)
  try:
    expected = httpx.post(
      server.url + "/search", json={"query": "river stone", "k": 10}
    ).json()
    dom = subprocess.run(
      [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        f"{server.url}/?q=river%20stone",
      ],
      capture_output=True,
      text=True,
      timeout=120,
      check=True,
    ).stdout
  finally:
    server.stop()
    retriever.close()
  collector = HitCollector()
  collector.feed(dom)
  assert collector.doc_ids == [h["doc_id"] for h in expected["hits"]]
  assert len(collector.doc_ids) == 10
  assert "Title doc" in dom  # titles are shown
