"""The HTML book (``python3 tasks.py site``), built from the committed notebooks and checked as a reader meets it.

Static checks on every page (links resolve, nothing is loaded from the web, no stderr boxes, alt text, navigation),
then every page in headless Chromium over a local HTTP server: no request fails and MathJax (local) has typeset
every formula, with no raw LaTeX such as ``$\\bar\\alpha`` left in the text. Chromium is Debian's ``chromium``
package (``apt-get install chromium``); without it the browser test is skipped and says so.
"""

import functools
import html
import http.server
import importlib.util
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("tasks", ROOT / "tasks.py")
tasks = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tasks)
NOTEBOOKS = tasks._notebooks([])
RAW_TEX = re.compile(r"\\(bar|alpha|beta|sigma|mathcal|frac|sqrt|nabla|varepsilon|mathbb|tilde|hat|mid|log)\b")


# Known prose bugs in a notebook owned by another lesson, reported; each entry is a page, the first words of the text
# left out of the raw-LaTeX check, and its length in characters.
# notebooks/02_ddpm.py, Exercise 3: a wrapped inline formula whose second line starts with "+ ",
# which Markdown reads as a list item, so the formula is cut in two and never typeset (remove once fixed).
KNOWN_UNTYPESET: list = []  # (page, first characters, length) of a passage known not to typeset


def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    try:
        tasks.mathjax_dir()
    except FileNotFoundError as e:
        pytest.skip(f"no local MathJax to build the site with: {e}")
    out = tmp_path_factory.mktemp("site")
    tasks.build_site(ROOT / "notebooks", out)
    return out


def _soup(path):
    from bs4 import BeautifulSoup

    return BeautifulSoup(path.read_text(), "html.parser")


def _pages(site):
    return sorted(site.glob("*.html"))


def test_the_site_has_an_index_every_notebook_every_guide_and_the_docs(site):
    names = {p.name for p in _pages(site)}
    want = {"index.html", "notation.html", "bibliography.html"}
    want |= {f"{nb.stem}.html" for nb in NOTEBOOKS} | {f"{nb.stem}_guide.html" for nb in NOTEBOOKS}
    assert want <= names, f"missing pages: {sorted(want - names)}"
    index = _soup(site / "index.html")
    linked = {a["href"] for a in index.find_all("a", href=True)}
    for nb in NOTEBOOKS:
        assert f"{nb.stem}.html" in linked and f"{nb.stem}_guide.html" in linked, f"the index does not list {nb.stem}"


def test_every_link_resolves_and_nothing_comes_from_the_web(site):
    for page in _pages(site):
        soup = _soup(page)
        for a in soup.find_all("a", href=True):
            href = a["href"]
            if re.match(r"^(https?|mailto):", href) or href.startswith("#"):
                continue
            assert (site / href.split("#")[0]).exists(), f"{page.name}: broken link {href}"
            assert not href.split("#")[0].endswith((".md", ".ipynb", ".py")), f"{page.name}: links a raw file {href}"
        for tag in soup.find_all(["script", "img", "link", "iframe", "source"]):
            url = tag.get("src") or tag.get("href") or ""
            assert not re.match(r"^(https?:)?//", url), f"{page.name}: <{tag.name}> loads {url} from the web"
        for style in soup.find_all("style"):
            assert not re.search(r"url\(['\"]?(https?:)?//", style.get_text()), f"{page.name}: CSS loads from the web"


def test_notebook_pages_have_previous_contents_guide_next(site):
    stems = [nb.stem for nb in NOTEBOOKS]
    for i, stem in enumerate(stems):
        navs = _soup(site / f"{stem}.html").select("nav.tinydiff-nav")
        assert len(navs) == 2, f"{stem}: a navigation bar at the top and at the bottom"
        hrefs = [a["href"] for a in navs[0].find_all("a")]
        assert "index.html" in hrefs and f"{stem}_guide.html" in hrefs
        lessons = [h for h in hrefs if h in {f"{s}.html" for s in stems}]
        want = ([f"{stems[i - 1]}.html"] if i > 0 else []) + ([f"{stems[i + 1]}.html"] if i + 1 < len(stems) else [])
        assert lessons == want, f"{stem}: previous/next are {lessons}, want {want}"
        assert i == 0 or hrefs[0] == want[0], f"{stem}: previous comes first"
        guide = [a["href"] for a in _soup(site / f"{stem}_guide.html").select("nav.tinydiff-nav")[0].find_all("a")]
        assert f"{stem}.html" in guide, f"{stem}_guide: no link back to its notebook"


def test_no_stderr_boxes_progress_bars_or_images_without_alt_text(site):
    for nb in NOTEBOOKS:
        soup = _soup(site / f"{nb.stem}.html")
        assert not soup.select('[data-mime-type="application/vnd.jupyter.stderr"]'), f"{nb.stem}: a stderr box"
        assert not re.search(r"\d+it/s\]|it/s\]|\|\s*\d+/\d+ \[", soup.get_text()), f"{nb.stem}: a progress bar"
        for img in soup.find_all("img"):
            alt = img.get("alt", "")
            assert alt and "No description" not in alt, f"{nb.stem}: an image without alt text"


class _Log(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def log_request(self, code="-", size="-"):
        type(self).requests.append((self.path, int(code) if str(code).isdigit() else code))

    def log_message(self, *args):
        pass


PROBE = """<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><pre id="out">running</pre><script>
const pages = %s, results = {};
function next(i) {
  if (i >= pages.length) { document.getElementById('out').textContent = 'RESULT ' + JSON.stringify(results); return; }
  const f = document.createElement('iframe');
  f.style.width = '1200px'; f.style.height = '900px';
  f.onload = () => {
    const w = f.contentWindow, d = f.contentDocument;
    const done = () => {
      const body = d.body.cloneNode(true);
      const skip = 'script, style, pre, code, .jp-CodeCell .jp-InputArea, .MathJax, .MathJax_Display';
      body.querySelectorAll(skip).forEach(e => e.remove());
      results[pages[i]] = {
        tex: d.querySelectorAll('script[type^="math/tex"]').length,
        typeset: d.querySelectorAll('script[type^="math/tex"]').length -
                 [...d.querySelectorAll('script[type^="math/tex"]')].filter(s => !s.previousSibling ||
                   !(s.previousSibling.className || '').toString().match(/MathJax/)).length,
        errors: d.querySelectorAll('.MathJax_Error, merror').length,
        text: body.textContent};
      f.remove(); next(i + 1);
    };
    if (!(w.MathJax && w.MathJax.Hub)) return done();
    // MathJax takes callbacks made in its own window only: wait there for the end of startup and typesetting
    w.eval("MathJax.Hub.Register.StartupHook('End', function () {" +
           "  MathJax.Hub.Queue(function () { window.typesetDone = true; }); });");
    const wait = () => (w.typesetDone ? done() : setTimeout(wait, 100));
    wait();
  };
  f.src = pages[i]; document.body.appendChild(f);
}
next(0);
</script></body></html>
"""


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install chromium): "
                    "the site was checked statically only, not in a browser")
def test_every_page_loads_and_its_formulas_are_typeset_in_chromium(site, tmp_path):
    pages = [p.name for p in _pages(site)]
    (site / "_probe.html").write_text(PROBE % json.dumps(pages))
    _Log.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Log, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=600000"]
    try:
        dom = subprocess.run([*flags, "--dump-dom", f"{base}/_probe.html"], capture_output=True, text=True,
                             timeout=600).stdout
        shot = tmp_path / "index.png"
        subprocess.run([*flags, "--window-size=1200,900", f"--screenshot={shot}", f"{base}/index.html"],
                       capture_output=True, timeout=120)
    finally:
        server.shutdown()
    m = re.search(r'<pre id="out">RESULT (.*?)</pre>', dom, re.S)
    assert m, f"the probe did not finish: {dom[:300]}"
    results = json.loads(html.unescape(m.group(1)))
    failed = [(path, code) for path, code in _Log.requests if code != 200 and code != 304]
    assert not failed, f"requests that failed: {failed[:10]}"
    assert {p for p, _ in _Log.requests} >= {f"/{p}" for p in pages}, "some pages were never requested"
    for page in pages:
        r = results[page]
        assert r["errors"] == 0, f"{page}: {r['errors']} MathJax errors"
        assert r["typeset"] == r["tex"], f"{page}: {r['tex'] - r['typeset']} of {r['tex']} formulas not typeset"
        text = r["text"]
        for known_page, first, length in KNOWN_UNTYPESET:
            if page == known_page and first in text:
                text = text[:text.index(first)] + text[text.index(first) + length:]
        raw = [text[max(0, m.start() - 60):m.end() + 20] for m in RAW_TEX.finditer(text)]
        assert not raw, f"{page}: raw LaTeX left in the text after typesetting: {raw[:3]}"
    for page in [p for p in pages if p.endswith("_guide.html")] + ["notation.html"]:
        assert results[page]["tex"] > 0, f"{page}: no formulas found (is MathJax's input there?)"
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (900, 1200), img.shape
    dark = (img[..., :3].mean(axis=2) < 0.5).mean()  # text covers part of the page: neither blank nor all dark
    assert 0.005 < dark < 0.5, f"the screenshot of index.html looks blank or broken ({dark:.3%} dark pixels)"
