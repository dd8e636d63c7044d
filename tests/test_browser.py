"""Reports in a real browser (headless Chromium through Playwright) and the widgets in JupyterLab."""

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import lab

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="Debian's chromium is installed by .ci/run"
    ),
]


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_offline(browser, url: str):
    """A page that records console errors, page errors, dialogs and every non-local request."""
    page = browser.new_page()
    seen = {"errors": [], "remote": [], "dialogs": []}
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))

    def route(r):
        if r.request.url.startswith(("file:", "data:", "blob:", "about:")):
            return r.continue_()
        seen["remote"].append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.goto(url, wait_until="load")
    page.wait_for_timeout(500)
    return page, seen


@pytest.mark.notebook
def test_reports_render_offline_with_every_figure(smoke_run, browser):
    out = smoke_run[0] / "reports" / "nb"
    pages = ["index.html"] + [
        e["html"] for e in json.loads((out / "status.json").read_text())["stages"].values()
    ]
    for name in pages:
        page, seen = open_offline(browser, (out / name).as_uri())
        assert not seen["remote"], f"{name} requested {seen['remote'][:3]}"
        assert not seen["errors"], f"{name}: {seen['errors'][:3]}"
        divs = page.locator(".plotly-graph-div").count()
        drawn = page.locator(".plotly-graph-div .main-svg").count()
        assert drawn >= divs, f"{name}: {divs - drawn} of {divs} figures not drawn"
        if name != "index.html":
            assert divs > 0, f"{name} has no figures"
        page.close()


@pytest.mark.notebook
def test_corpus_text_is_shown_as_text_and_never_runs(smoke_run, browser, tmp_path):
    home = smoke_run[0]
    evil = tmp_path / "evil.txt"
    evil.write_text(
        "<script>alert(1)</script>今天天气很好，我们去公园散步。\n"
        "<img src=x onerror=alert(2)>人民日报记者报道了这条新闻。\n"
        + "中国的首都是北京，北京是一座历史悠久的城市。\n"
        * 20,
        encoding="utf-8",
    )
    lab("run", "--profile", "smoke", "--run-id", "xss", "--to", "corpus",
        "-p", f"corpus.sources=[peoples_daily, {evil}]", home=home)  # fmt: skip
    html_path = home / "reports" / "xss" / "01_corpus.html"
    page, seen = open_offline(browser, html_path.as_uri())
    body = page.inner_text("body")
    assert "<script>alert(1)</script>" in body and "<img src=x onerror=alert(2)>" in body
    assert not seen["dialogs"], f"a script from the corpus ran: {seen['dialogs']}"
    assert page.locator("img[src=x]").count() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.notebook
@pytest.mark.slow
def test_jupyterlab_runs_a_stage_notebook_and_its_widget_reacts(smoke_run, browser, tmp_path):
    """Start JupyterLab on 127.0.0.1, open the WWM notebook on the smoke run, run it, click the
    mask inspector's toggle and see its output change."""
    import nbformat

    home = smoke_run[0]
    root = Path(__file__).resolve().parents[1]
    nb = nbformat.read(str(root / "notebooks" / "02_wwm.ipynb"), as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace('run_id = ""', 'run_id = "nb"').replace(
        'profile = "cpu"', 'profile = "smoke"'
    )
    nbformat.write(nb, str(tmp_path / "wwm.ipynb"))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "ZH_MINILAB_HOME": str(home)}
    env.pop("ZH_MINILAB_BATCH", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        page = browser.new_page()
        deadline = time.time() + 60
        while True:
            try:
                page.goto(
                    f"http://127.0.0.1:{port}/lab/tree/wwm.ipynb?token={token}",
                    wait_until="domcontentloaded",
                )
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        # run only once the kernel is up: a loaded machine can take a while to start it
        # no kernel status shown: Run All still queues the cells until the kernel is ready
        with contextlib.suppress(Exception):
            page.wait_for_function(
                "() => document.body.innerText.includes('Idle')", timeout=180_000
            )
        started = "() => [...document.querySelectorAll('.jp-InputPrompt')].some(e => /\\[(\\*|\\d+)\\]/.test(e.innerText))"
        for _attempt in range(5):  # a freshly loaded page may ignore the first menu click
            page.locator("li.lm-MenuBar-item", has_text="Run").click()
            page.locator(
                ".lm-Menu-item:not(.lm-mod-disabled)", has_text="Run All Cells"
            ).first.click()
            try:
                page.wait_for_function(started, timeout=20_000)
                break
            except Exception:
                page.keyboard.press("Escape")
        else:
            raise AssertionError("Run All Cells never started the notebook")
        toggle = page.locator(".widget-toggle-button", has_text="token")
        try:
            toggle.wait_for(timeout=300_000)
        except Exception as e:  # say what the notebook shows instead (an error output, a dialog)
            raise AssertionError(page.inner_text("body")[-3000:]) from e
        inspector = page.locator(".widget-html-content")
        before = inspector.first.inner_html()
        assert "outline" in before  # the masked words are drawn
        toggle.click()
        page.wait_for_function(
            "([sel, old]) => { const e = document.querySelector(sel); return e && e.innerHTML !== old }",
            arg=[".widget-html-content", before], timeout=30_000,
        )  # fmt: skip
        assert inspector.first.inner_html() != before
    finally:
        server.terminate()
        server.wait(timeout=30)


CHINESE_PROBE = """([ids]) => {
    // the page's first ten distinct Chinese characters, in the font of the first text holding one
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    const seen = new Set();
    let node, style = null;
    while (seen.size < 10 && (node = walker.nextNode())) {
        for (const c of node.textContent.match(/[\\u4e00-\\u9fff]/g) || []) {
            style = style || getComputedStyle(node.parentElement);
            seen.add(c);
        }
    }
    const chars = [...seen].slice(0, 10);
    for (const [i, c] of [...chars, "\\u{10FFFD}"].entries()) {  // the last: a codepoint no font has
        const s = document.createElement("span");
        s.id = ids + i;
        s.textContent = c;
        s.style.cssText = `font-family: ${style.fontFamily}; font-size: 40px; display: inline-block`;
        document.body.prepend(s);
    }
    return chars;
}"""


def drawn_as_missing_glyph(browser, url: str) -> tuple[list[str], list[str]]:
    """(the page's first Chinese characters, those drawn exactly like a codepoint with no glyph)."""
    page = browser.new_page()
    page.goto(url, wait_until="load")
    chars = page.evaluate(CHINESE_PROBE, ["glyph-"])
    shot = [page.locator(f"#glyph-{i}").screenshot() for i in range(len(chars) + 1)]
    page.close()
    return chars, [c for c, png in zip(chars, shot) if png == shot[-1]]


@pytest.mark.notebook
def test_chinese_in_reports_is_drawn_with_a_font(smoke_run, browser, tmp_path):
    """Chinese text in a report is drawn with real glyphs, not the missing-glyph box; and the check
    sees the boxes in a browser that has only Latin fonts."""
    page = (smoke_run[0] / "reports" / "nb" / "01_corpus.html").as_uri()
    chars, boxes = drawn_as_missing_glyph(browser, page)
    assert len(chars) == 10 and not boxes, (
        f"drawn as missing glyphs: {boxes}; install fonts-noto-cjk"
    )

    latin = tmp_path / "fonts.conf"
    latin.write_text(
        f"<?xml version='1.0'?><fontconfig><dir>/usr/share/fonts/truetype/dejavu</dir>"
        f"<cachedir>{tmp_path / 'fc-cache'}</cachedir></fontconfig>",
        encoding="utf-8",
    )
    env = {**os.environ, "FONTCONFIG_FILE": str(latin)}
    bare = browser.browser_type.launch(executable_path=CHROMIUM, args=ARGS, env=env)
    _, boxes = drawn_as_missing_glyph(bare, page)
    bare.close()
    assert len(boxes) == 10, "without a CJK font the check must see missing glyphs"


@pytest.mark.notebook
def test_a_copied_report_folder_renders_offline(smoke_run, browser, tmp_path):
    """plotly.js sits once in the run's report folder and the pages refer to it relatively."""
    copy = tmp_path / "copied"
    shutil.copytree(smoke_run[0] / "reports" / "nb", copy)
    page, seen = open_offline(browser, (copy / "06_evaluate.html").as_uri())
    assert not seen["remote"] and not seen["errors"], seen
    divs = page.locator(".plotly-graph-div").count()
    assert divs > 0 and page.locator(".plotly-graph-div .main-svg").count() >= divs
    page.close()
