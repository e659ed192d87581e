"""A real browser (Debian Chromium, headless, via Playwright) drives the page on the real server:
upload a real photo, predict with the real MobileNetV2, run Grad-CAM and LIME as a background job,
watch the progress finish, check predictions and rendered overlays, explain another class."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from biasscope.explainers import EXPLAINERS
from biasscope.formatting import fmt_number, fmt_rate

from .conftest import browser_page


@pytest.mark.browser
@pytest.mark.slow
def test_page_end_to_end(make_app, mobilenet, tmp_path: Path):
    from playwright.sync_api import expect
    from skimage import data

    # the real configuration: resnet18 by default, MobileNetV2 as the fallback (shared, already loaded)
    app = make_app(DEFAULT_MODEL="resnet18", FALLBACK_MODELS=("mobilenet_v2",),
                   EXTRA_MODELS={"mobilenet_v2": lambda: mobilenet})
    resnet_ready = app.extensions["biasscope"].models.status("resnet18")["ready"]
    photo = tmp_path / "coffee.jpg"
    Image.fromarray(data.coffee()).save(photo, quality=92)
    # LIME is the slow method; Integrated Gradients stands in where LIME is not registered
    slow_method = "lime" if "lime" in EXPLAINERS else "integrated_gradients"

    with browser_page(app, viewport={"width": 1360, "height": 1000}, timeout_ms=60_000) as (base, page, problems):

        page.goto(base + "/")
        page.wait_for_selector("body[data-ready='1']")
        if not resnet_ready:
            expect(page.locator("#banner")).to_contain_text("Model in use: mobilenet_v2")
            expect(page.locator("#banner")).to_contain_text("resnet18 weights are not on this machine")
        expect(page.locator("#model-select")).to_have_value("mobilenet_v2")
        expect(page.locator("#samples .sample")).to_have_count(5)

        # upload a real photo with the file picker; the top-5 predictions appear with bars
        page.set_input_files("#file-input", str(photo))
        expect(page.locator("#predictions li.prediction")).to_have_count(5)
        expect(page.locator("#predictions li.prediction").first).to_contain_text("espresso")
        bars = page.locator("#predictions li.prediction .bar")
        top_width = bars.first.evaluate("e => e.getBoundingClientRect().width")
        second_width = bars.nth(1).evaluate("e => e.getBoundingClientRect().width")
        assert top_width > 10 * max(second_width, 1)  # espresso ~99 %

        # choose Grad-CAM and LIME (small sample count keeps the test quick), start the job
        for box in page.locator(".method-check").all():
            box.set_checked(box.get_attribute("value") in ("gradcam", slow_method))
        if slow_method == "lime":
            page.fill("[name='lime.num_samples']", "120")
            page.fill("[name='lime.n_segments']", "30")
        else:
            page.fill("[name='integrated_gradients.steps']", "8")
        page.click("#explain-btn")
        expect(page.locator("#job")).to_be_visible()
        page.wait_for_selector("#job[data-status='done']", timeout=240_000)
        assert page.locator("#progress-bar").evaluate("e => e.style.width") == "100%"

        for method in ("gradcam", slow_method):
            card = page.locator(f".result-card[data-method='{method}']")
            expect(card).to_be_visible()
            heat = card.locator("img.heat")
            heat.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heat.element_handle())
            assert heat.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [600, 400]
            assert card.locator("img.base").evaluate("i => i.naturalWidth") == 600
            expect(card.locator(".checks")).to_contain_text("Deletion AUC")
            expect(card.locator(".checks")).to_contain_text("Insertion AUC")
            ticks = card.locator(".legend-ticks span").all_inner_texts()
            assert len(ticks) == 3 and ticks[0] != ticks[-1]
        kinds = {m: page.locator(f".result-card[data-method='{m}'] .badge").inner_text()
                 for m in ("gradcam", slow_method)}
        assert kinds == {"gradcam": "sequential", slow_method: "diverging"}
        expect(page.locator(".original-card img.base")).to_be_visible()
        expect(page.locator("#results-target")).to_contain_text("espresso")
        expect(page.locator(".result-card[data-method='gradcam'] .caution")).to_have_count(0)  # p(espresso) ~ 1

        # the opacity slider changes every overlay and the download links
        page.locator("#opacity").fill("0.3")
        assert page.locator(".result-card img.heat").first.evaluate("i => i.style.opacity") == "0.3"
        href = page.locator("a[data-kind=overlay]").first.get_attribute("href")
        assert "alpha=0.3" in href and "download=1" in href
        assert page.locator("#download-json").get_attribute("href").endswith("/result.json?download=1")
        page.screenshot(path=str(tmp_path / "biasscope-explained.png"), full_page=True)

        # explain another class by clicking it in the prediction list (Grad-CAM only, quick)
        for box in page.locator(".method-check").all():
            box.set_checked(box.get_attribute("value") == "gradcam")
        page.uncheck("#faithfulness")
        second = page.locator("#predictions li.prediction").nth(1)
        label = second.locator(".pred-label").inner_text()
        second.click()
        expect(page.locator("#target-label")).to_contain_text(label)
        page.wait_for_selector("#job[data-status='done']", timeout=120_000)
        expect(page.locator("#results-target")).to_contain_text(label)
        expect(page.locator(".result-card[data-method='gradcam'] img.heat")).to_be_visible()

        # or search the class names for one outside the top 5
        page.fill("#class-search", "stethoscope")
        page.click("#class-pick")
        expect(page.locator("#target-label")).to_contain_text("stethoscope (#823)")
        expect(page.locator("#results-target")).to_contain_text("stethoscope")
        expect(page.locator(".result-card[data-method='gradcam'] img.heat")).to_be_visible()
        # a class the model gives p < 0.001 on a coffee cup: its heatmap carries a visible warning
        expect(page.locator(".result-card[data-method='gradcam'] .caution")).to_contain_text("does not predict")

        # a concept is a target too: its probability sums its classes', said plainly on the page
        page.fill("#class-search", "coffee = espresso, cup, coffee mug")
        page.click("#class-pick")
        expect(page.locator("#target-label")).to_contain_text("coffee (concept: espresso + cup + coffee mug)")
        page.wait_for_selector("#job[data-status='done']", timeout=120_000)
        expect(page.locator("#results-target")).to_contain_text("for “coffee”")
        expect(page.locator("#results-target")).to_contain_text("sum of their logits")
        expect(page.locator(".result-card[data-method='gradcam'] .caution")).to_have_count(0)

        # drag and drop: a photo dropped on the drop zone is uploaded and predicted
        page.evaluate("""async () => {
            const blob = await (await fetch('/api/samples/chelsea.jpg')).blob();
            const dt = new DataTransfer();
            dt.items.add(new File([blob], 'dropped-cat.jpg', {type: 'image/jpeg'}));
            document.querySelector('#dropzone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        }""")
        expect(page.locator("#image-meta")).to_contain_text("dropped-cat.jpg")
        expect(page.locator("#predictions li.prediction").first).to_contain_text("cat")
        expect(page.locator("#results-section")).to_be_hidden()

        # a non-image upload shows a clear message, and the page keeps working
        bad = tmp_path / "notes.jpg"
        bad.write_text("not an image")
        page.set_input_files("#file-input", str(bad))
        expect(page.locator("#error")).to_contain_text("not a readable image")
        problems = [p for p in problems if "400 (BAD REQUEST)" not in p]  # the refused upload itself
        page.screenshot(path=str(tmp_path / "biasscope-error.png"), full_page=True)
    assert problems == []
    assert (tmp_path / "biasscope-explained.png").stat().st_size > 50_000



@pytest.mark.browser
@pytest.mark.slow
def test_audit_from_the_page(make_app, tmp_path: Path, monkeypatch):
    """Start an audit on a tiny synthetic manifest from the page, follow it, read the dashboard."""
    from playwright.sync_api import expect

    from tests.audit.synth import make_adapter, write_dataset

    monkeypatch.setenv("BIASSCOPE_BATCH_SIZE", "32")
    root = tmp_path / "data"
    write_dataset(root / "synth", n_per_cell=5, seed=2)
    app = make_app(DATA_ROOT=str(root), DEFAULT_MODEL="biased",
                   EXTRA_MODELS={"biased": lambda: make_adapter(2.0, "biased")})
    with browser_page(app, viewport={"width": 1300, "height": 1000}, timeout_ms=60_000) as (base, page, problems):
        page.goto(base + "/audits")
        page.wait_for_selector("body[data-ready='1']")
        expect(page.locator("#no-runs")).to_be_visible()
        # pick the manifest in the data-root browser
        page.get_by_role("button", name="synth/").click()
        page.locator("#browser button.csv[data-path='synth/manifest.csv']").click()
        expect(page.locator("#manifest-info")).to_contain_text("20 images")
        expect(page.locator(".group-check[value='gender']")).to_be_checked()
        expect(page.locator(".model-check[value='biased']")).to_be_checked()
        page.fill("#concepts", "doctor = stethoscope, lab coat\nnurse = scrubs")
        page.fill("#stereotypical", "doctor:male, nurse:female")
        page.fill("#n-boot", "200")
        page.fill("#n-perm", "200")
        page.fill("#min-group", "2")
        page.fill("#run-name", "from-page")
        page.click("#start-btn")
        page.wait_for_url(base + "/audits/from-page")
        page.wait_for_selector("body[data-ready='1']", timeout=120_000)
        expect(page.locator("#run-meta")).to_contain_text("status done")
        metrics = page.evaluate("() => fetch('/api/audits/from-page/metrics.json').then(r => r.json())")
        by_group = metrics["models"]["biased"]["groupings"]["gender"]["by_group"]
        table = page.locator(".model-block[data-model='biased'] .grouping[data-grouping='gender'] table.per-group")
        rows = {r.locator("td").first.inner_text(): r.locator("td").all_inner_texts()
                for r in table.locator("tbody tr").all()}
        assert set(rows) == {"female", "male"}
        for g, cells in rows.items():
            assert cells[1] == str(by_group[g]["n"])
            assert cells[2] == f"{100 * by_group[g]['accuracy']:.1f}%"
            assert cells[6] == f"{by_group[g]['mean_p_true']:.3f}"
            assert cells[3].startswith("[")  # its confidence interval
        expect(page.locator(".model-block .bias-score")).to_contain_text("stereotypical minus atypical")
        expect(page.locator(".model-block .regions").first).to_contain_text("hair")
        expect(page.locator(".telling .tile")).to_have_count(12)
        # the answer comes first, with the numbers of metrics.json; every tile names the predicted class
        answer = page.locator(".model-block[data-model='biased'] .answer li").all_inner_texts()
        assert answer == metrics["models"]["biased"]["answer"]
        assert any(a.startswith("Stereotypical cells") for a in answer)
        expect(page.locator(".telling .tile .pred").first).to_contain_text("predicted ")
        # the result sections are report.html's, rendered on the server: the same chart, bar for bar
        report = page.evaluate("() => fetch('/api/audits/from-page/report.html').then(r => r.text())")
        title = "Accuracy by gender (95% CI)"
        grouping = page.locator(".model-block[data-model='biased'] .grouping[data-grouping='gender']")
        chart = grouping.locator(f"svg[aria-label='{title}']")
        expect(chart).to_be_visible()
        in_report = re.search(rf'<svg [^>]*aria-label="{re.escape(title)}".*?</svg>', report, flags=re.S).group(0)
        bars_page = chart.locator("rect").evaluate_all(
            "rs => rs.map(r => [r.getAttribute('x'), r.getAttribute('width')])")
        assert bars_page == [list(b) for b in re.findall(r'<rect x="([\d.]+)" y="\d+" width="([\d.]+)"', in_report)]
        assert len(bars_page) == 2
        expect(page.locator(".model-block[data-model='biased'] h4").first).to_be_visible()
        # numbers left to the script follow formatting.py
        probe = [0.0625, 2.4e-4, 0.123456, -0.0004, None, 0.03125]
        shown = page.evaluate("vs => vs.map(v => [num(v), pct(v), rate(v)])", probe)
        assert shown == [[fmt_number(v), fmt_number(v, True), fmt_rate(v)] for v in probe]
        page.screenshot(path=str(tmp_path / "biasscope-audit-dashboard.png"), full_page=True)
        # drill down to the most telling image: its stored Grad-CAM overlay, then a full-resolution explanation
        page.locator(".telling .tile").first.click()
        expect(page.locator("#drill")).to_be_visible()
        overlay = page.locator("#drill-body figure[data-overlay='biased:gradcam'] img")
        page.wait_for_function("img => img.complete && img.naturalWidth === 32", arg=overlay.element_handle())
        page.click("#drill-explain")
        page.wait_for_selector("#drill-job figure img")
        page.screenshot(path=str(tmp_path / "biasscope-audit-drill.png"), full_page=True)
    assert problems == []
    print(tmp_path)
