"""Studio II in a real browser (Playwright driving Debian's chromium against a live studio with its runner in a
thread), as a person would: train a quick probe from the train page and watch it live, review a confusion cell
with the label view's hotkeys, retrain and compare, follow a 2-epoch fine-tune's curve, move and save the unknown
threshold, try the model on a photo as ``imclass predict`` would, label a folder, export, cancel and resume.
Every Studio II page is photographed (under the test's tmp folder, copied to ``$IMCLASS_SCREENSHOTS`` when set).

The project ``flowers`` has real photos in split folders (train / val) of three classes, with label errors: a few
tulips filed under ``val/sunflower``. One browser serves the module; each test reads what it needs from the API
rather than assuming what the tests before it did. Waits are on DOM content that events produce (Playwright's
auto-waiting), never sleeps.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from imclass.studio import StudioSettings  # noqa: E402
from studio_helpers import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    LiveStudio,
    Screens,
    copy_as,
    distinct_photos,
)

pytestmark = pytest.mark.slow  # starts a browser and a studio

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

CLASSES = ["daisy", "sunflower", "tulip"]
TRAIN_PER_CLASS, VAL_PER_CLASS, LABEL_ERRORS = 16, 6, 5  # LABEL_ERRORS tulips filed under val/sunflower
WAIT_MS = 15_000
RUN_MS = 600_000  # a run on a busy 2-core machine: a generous bound, not a timing assumption


# ---- fixtures --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # a dependency of the tests (make setup installs it), not a reason to skip
        pytest.fail("the browser tests need playwright: .venv/bin/pip install playwright")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Screens:
    return Screens(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A live studio whose runs execute in a runner thread (the suggestions worker is stopped: it would only
    compete for the two cores)."""
    with LiveStudio(StudioSettings(data_dir=tmp_path_factory.mktemp("studio"), worker="thread")) as s:
        state = s.app.state.studio
        state.worker.stop()
        state.worker = None
        yield s


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(WAIT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def api(studio, path: str, method: str = "GET", **kw):
    r = httpx.request(method, f"{studio.url}/api/v1{path}", timeout=60, **kw)
    r.raise_for_status()
    return r.json() if r.content else None


def wait_run(studio, rid: int) -> dict:
    deadline = time.monotonic() + RUN_MS / 1000
    while (run := api(studio, f"/runs/{rid}"))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, run
        time.sleep(0.3)
    return run


def events(studio, rid: int) -> list[tuple[str, dict]]:
    """The events of a finished run, as its SSE stream replays them."""
    with httpx.stream("GET", f"{studio.url}/api/v1/runs/{rid}/events", timeout=60) as s:
        lines = list(s.iter_lines())
    return [(lines[i][7:], json.loads(lines[i + 1][6:])) for i in range(len(lines) - 1)
            if lines[i].startswith("event: ")]


def shown_id(page, other: str | None = None) -> str:
    """The id of the image the label view shows, once it is shown (and differs from ``other``)."""
    page.wait_for_function("o => { const s = document.body.dataset.shown; return s && s !== o; }", arg=other or "")
    return page.evaluate("document.body.dataset.shown")


def wait_done(page, studio, rid: int) -> None:
    """Until the run page shows the run ended; it must have ended done (else: why it did not)."""
    page.wait_for_function("document.body.dataset.runDone", timeout=RUN_MS)
    run = api(studio, f"/runs/{rid}")
    assert page.evaluate("document.body.dataset.runDone") == run["status"] == "done", run["error"]


def scroll_to(page, selector: str) -> None:
    """Bring a section to the top of the window, below the sticky bar."""
    page.evaluate("s => { document.querySelector(s).scrollIntoView(); window.scrollBy(0, -60); }", selector)


def import_folder(studio, pid: int, folder: Path, expected: int) -> None:
    api(studio, f"/projects/{pid}/imports", "POST", json={"path": str(folder)})
    deadline = time.monotonic() + 120
    while api(studio, f"/projects/{pid}")["images"] < expected:
        assert time.monotonic() < deadline, "the import did not finish"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def flowers(datasets, studio, tmp_path_factory) -> dict:
    """The project: photos/{train,val}/{daisy,sunflower,tulip}/ (16 + 6 per class) and 5 tulips misfiled under
    val/sunflower (named tulip_*: the test knows their true class); 71 images."""
    root = tmp_path_factory.mktemp("flowers") / "photos"
    seen: set[str] = set()
    for cls in CLASSES:
        picked = distinct_photos(datasets / "flowers5" / "all" / cls, TRAIN_PER_CLASS + VAL_PER_CLASS, seen)
        for i, src in enumerate(picked):
            copy_as(src, root / ("train" if i < TRAIN_PER_CLASS else "val") / cls / src.name)
    for src in distinct_photos(datasets / "flowers5" / "all" / "tulip", LABEL_ERRORS, seen):
        copy_as(src, root / "val" / "sunflower" / f"tulip_{src.name}")
    pid = api(studio, "/projects", "POST", json={"name": "flowers", "classes": CLASSES})["id"]
    total = len(CLASSES) * (TRAIN_PER_CLASS + VAL_PER_CLASS) + LABEL_ERRORS
    import_folder(studio, pid, root, total)
    spare = tmp_path_factory.mktemp("spare")  # photos the project never saw (Try it, labelling a folder)
    for i, src in enumerate(distinct_photos(datasets / "flowers5" / "all" / "daisy", 4, seen)
                            + distinct_photos(datasets / "flowers5" / "all" / "sunflower", 2, seen)):
        copy_as(src, spare / f"{i:02d}_{src.name}")
    return {"pid": pid, "root": root, "images": total, "val": len(CLASSES) * VAL_PER_CLASS + LABEL_ERRORS,
            "spare": spare}


@pytest.fixture(scope="module")
def probe(studio, flowers) -> int:
    """A finished quick probe of ``flowers``: the first one the tests trained, else one queued here."""
    done = [r for r in api(studio, f"/projects/{flowers['pid']}/runs")
            if r["mode"] == "probe" and r["status"] == "done" and r["parent"] is None]
    rid = done[-1]["id"] if done else api(studio, f"/projects/{flowers['pid']}/runs", "POST",
                                          json={"mode": "probe"})["id"]
    assert wait_run(studio, rid)["status"] == "done"
    return rid


# ---- 1. train a probe from the train page, watch it live ------------------------------------------------

@pytest.mark.realdata
def test_train_a_probe_from_the_train_page_and_watch_it(flowers, studio, page, browser, screens):
    pid = flowers["pid"]
    page.goto(f"{studio.url}/projects/{pid}")
    page.click("#project-train")  # the project page links to the train page (and the nav has it)
    page.wait_for_url(f"**/projects/{pid}/train")
    assert page.locator("header nav a[aria-current=page]").inner_text() == "Train"
    assert f"{flowers['val']} validation images" in page.inner_text(".validation")  # the import's own split
    # the default: the best in a time budget (5 minutes), which chooses its own epochs, batch and learning rate
    assert page.locator("input[name=mode]").first.get_attribute("value") == "budget"
    assert page.is_checked("input[name=mode][value=budget]")
    assert page.locator("#train-budget").is_visible() and page.input_value("#train-budget") == "5"
    assert page.locator("#train-epochs").is_disabled() and page.locator("#train-augment").is_enabled()
    preview = page.locator("#augment-preview")
    page.wait_for_function("() => { const i = document.querySelector('#augment-preview'); "
                           "return i.complete && i.naturalWidth > 0; }")
    # the preview follows the preset (fine-tuning uses it; the probe does not)
    page.check("input[name=mode][value=finetune]")
    assert page.locator("#train-augment").is_enabled() and page.locator("#train-epochs").is_enabled()
    page.select_option("#train-augment", "heavy")
    page.wait_for_function("() => { const i = document.querySelector('#augment-preview'); return i.src.includes("
                           "'preset=heavy') && i.complete && i.naturalWidth > 0 && !i.classList.contains('loading'); }")
    assert "size=128" in preview.get_attribute("src")
    assert page.locator("#train-budget").is_hidden()
    screens(page, "runs-01-train", full_page=True)
    page.check("input[name=mode][value=probe]")
    assert page.locator("#train-epochs").is_disabled() and page.locator("#train-augment").is_disabled()
    page.click("#train-start")
    page.wait_for_url("**/runs/*")
    rid = int(page.url.rstrip("/").split("/")[-1])
    page.evaluate("window.sameDocument = true")
    # live: the preview grid and the chart come from the run's events, as they arrive
    tiles = page.locator("#preview .ptile")
    page.wait_for_function("window.studioRun && ['running', 'done'].includes(window.studioRun.status)",
                           timeout=RUN_MS)
    if page.evaluate("window.studioRun.status") == "running":
        screens(page, "runs-02-live-probe")
    page.wait_for_function("window.studioRun.live.epoch >= 1 || window.studioRun.finished", timeout=RUN_MS)
    assert page.evaluate("window.studioRun.live.epoch") == 1, api(studio, f"/runs/{rid}")["error"]
    assert tiles.count() == min(12, flowers["val"])
    assert page.locator("#chart-scores circle.point[data-key=val_accuracy]").count() == 1
    assert page.locator("#preview-caption").inner_text().endswith(f"of {tiles.count()} right")
    # the run ends: its evaluation appears in the same page (no reload)
    page.locator("#evaluation .metric-card[data-metric=accuracy]").wait_for(timeout=RUN_MS)
    assert page.evaluate("window.sameDocument") is True
    run = api(studio, f"/runs/{rid}")
    assert run["status"] == "done" and run["mode"] == "probe"
    assert page.inner_text("#run-status") == "Done"
    shown = page.inner_text("#evaluation .metric-card[data-metric=accuracy] .metric-value")
    assert shown == f"{100 * run['metrics']['val']['accuracy']:.1f}%"
    epoch = next(d for k, d in events(studio, rid) if k == "epoch")
    answers = tiles.evaluate_all("ts => ts.map(t => [Number(t.dataset.id), t.querySelector('.ppred strong')"
                                 ".textContent])")
    assert answers == [[p["image_id"], p["predicted"]] for p in epoch["preview"]]
    # a second tab (or a refresh) shows the same state, read from the server
    other = browser.new_context(viewport=VIEWPORT).new_page()
    other.goto(f"{studio.url}/runs/{rid}")
    other.locator("#evaluation").wait_for()
    assert other.locator("#preview .ptile").evaluate_all(
        "ts => ts.map(t => [Number(t.dataset.id), t.querySelector('.ppred strong').textContent])") == answers
    assert other.locator("#chart-scores circle.point").count() == page.locator("#chart-scores circle.point").count()
    other.context.close()
    page.reload()
    page.locator("#confusion").wait_for()
    screens(page, "runs-03-evaluation", full_page=True)
    # evaluation: every confusion cell with images links to them; the matrix adds up to the validation images
    counts = [int(a.inner_text()) for a in page.locator("#confusion td.cell a").all()]
    assert sum(counts) == run["metrics"]["val"]["n"] == flowers["val"]
    assert page.locator("#per-class tbody tr").count() == len(CLASSES)
    assert page.locator("#reliability svg rect.acc").count() >= 1
    # the queue on the train page and the project page list it
    page.goto(f"{studio.url}/projects/{pid}/train")
    row = page.locator(f"#runs tr[data-run='{rid}']")
    assert row.locator(".status").inner_text() == "Done" and "%" in row.inner_text()
    page.goto(f"{studio.url}/projects/{pid}")
    page.locator(f"#project-runs tr[data-run='{rid}']").wait_for()


@pytest.mark.realdata
def test_train_a_budget_run_and_read_its_candidates(flowers, studio, page, screens):
    """The default mode, started from the train page with the smallest budget: the live page lists each
    candidate as it is decided; the report tabulates them, with the one kept and why the run stopped."""
    pid = flowers["pid"]
    page.goto(f"{studio.url}/projects/{pid}/train")
    screens(page, "runs-01b-train-budget")
    page.fill("#train-budget", "0.5")
    page.click("#train-start")
    page.wait_for_url("**/runs/*")
    rid = int(page.url.rstrip("/").split("/")[-1])
    page.wait_for_function("window.studioRun && (window.studioRun.candidates.length >= 1 || "
                           "window.studioRun.finished)", timeout=RUN_MS)
    if page.evaluate("window.studioRun.status") == "running":
        screens(page, "runs-02b-live-budget")
    wait_done(page, studio, rid)
    run = api(studio, f"/runs/{rid}")
    assert run["mode"] == "budget" and run["params"]["budget_minutes"] == 0.5
    plan = run["metrics"]["budget"]
    assert page.locator("#run-candidates li").count() == len(plan["candidates"])
    rows = page.locator("#budget-candidates tbody tr")
    assert rows.count() == len(plan["candidates"])
    assert page.inner_text("#budget-winner") == plan["winner"]
    assert page.locator("#budget-candidates tr.winner").count() == 1
    assert page.inner_text("#budget-stopped") == plan["stopped"]
    page.reload()
    page.locator("#budget-report").wait_for()
    scroll_to(page, "#evaluation")
    screens(page, "runs-03b-budget-report")


# ---- 2. a confusion cell reviewed with hotkeys, retrain, compare -------------------------------------------

@pytest.mark.realdata
def test_review_a_confusion_cell_with_hotkeys_then_retrain_and_compare(flowers, studio, probe, page, screens):
    pid, rid = flowers["pid"], probe
    cell = api(studio, f"/runs/{rid}/predictions", params={"true": "sunflower", "predicted": "tulip"})
    misfiled = [p for p in cell if Path(p["name"]).name.startswith("tulip_")]
    assert len(misfiled) >= 3, f"the probe should answer tulip for the misfiled tulips: {cell}"
    page.goto(f"{studio.url}/runs/{rid}")
    page.click("#confusion td.cell[data-true=sunflower][data-predicted=tulip] a")
    page.wait_for_url(f"**/runs/{rid}/review?*")
    shown = shown_id(page)
    assert page.locator("#queue option:checked").inner_text().endswith(f"({len(cell)})")
    assert {int(i) for i in page.evaluate("Object.keys(JSON.parse(document.querySelector('#review-config')"
                                          ".textContent).preds)")} == {p["image_id"] for p in cell}
    screens(page, "runs-04-review-cell")
    tulip_key = str(CLASSES.index("tulip") + 1)
    relabelled: list[int] = []
    while len(relabelled) < 3:
        name = page.inner_text("#photo-name")
        assert "answered tulip" in page.inner_text("#review-pred")
        if not Path(name).name.startswith("tulip_"):  # a sunflower the model got wrong: its label is right
            page.keyboard.press("ArrowRight")
            shown = shown_id(page, shown)
            continue
        iid = int(shown)
        if len(relabelled) == 2:  # another tab changed the third one first: the view shows it, saves nothing
            image = api(studio, f"/projects/{pid}/images/{iid}")
            api(studio, f"/projects/{pid}/images/{iid}/labels", "PUT",
                json={"labels": ["daisy"], "version": image["version"]})
            page.keyboard.press(tulip_key)
            page.locator("#conflict").wait_for(state="visible")
            assert "now daisy" in page.inner_text("#conflict")
            assert api(studio, f"/projects/{pid}/images/{iid}")["labels"] == ["daisy"]
        page.keyboard.press(tulip_key)
        shown = shown_id(page, shown)
        assert api(studio, f"/projects/{pid}/images/{iid}")["labels"] == ["tulip"], name
        relabelled.append(iid)
    # z undoes the last one, and the same key gives it again
    page.keyboard.press("z")
    page.wait_for_function("id => document.body.dataset.shown === id", arg=str(relabelled[-1]))
    assert api(studio, f"/projects/{pid}/images/{relabelled[-1]}")["labels"] == ["daisy"]
    page.keyboard.press(tulip_key)
    shown_id(page, str(relabelled[-1]))
    assert api(studio, f"/projects/{pid}/images/{relabelled[-1]}")["labels"] == ["tulip"]
    # Retrain: same settings and validation images, the labels as they are now
    page.click("#review-retrain")
    page.wait_for_url("**/runs/*")
    new = int(page.url.rstrip("/").split("/")[-1])
    assert new != rid
    wait_done(page, studio, new)
    old_run, new_run = api(studio, f"/runs/{rid}"), api(studio, f"/runs/{new}")
    assert new_run["parent"] == rid and new_run["mode"] == "probe"
    assert new_run["metrics"]["val"]["n"] == old_run["metrics"]["val"]["n"]  # the same validation images
    assert new_run["metrics"]["val"]["accuracy"] != old_run["metrics"]["val"]["accuracy"]
    # compare: the head's form offers the parent
    assert page.locator("#compare-a option:checked").get_attribute("value") == str(rid)
    page.click("#compare-go")
    page.wait_for_url("**/runs/compare?*")
    cmp = api(studio, f"/runs/{rid}/compare/{new}")
    acc = page.locator("#deltas tr[data-metric=accuracy] td.delta").inner_text()
    assert acc == f"{100 * cmp['metrics']['accuracy']['delta']:+.1f} pts"
    changed = page.locator("#changed .ptile").evaluate_all("ts => ts.map(t => Number(t.dataset.id))")
    assert sorted(changed) == sorted(c["image_id"] for c in cmp["changed"])
    if not changed:
        assert "No answer changed" in page.inner_text("#changed")
    labels_changed = page.locator("#relabelled .ptile")
    assert sorted(labels_changed.evaluate_all("ts => ts.map(t => Number(t.dataset.id))")) == sorted(relabelled)
    assert labels_changed.locator(".pbadge.good").count() == 3  # right now: the model answered tulip
    screens(page, "runs-05-compare", full_page=True)
    print(f"\nretrain after 3 labels fixed: accuracy {old_run['metrics']['val']['accuracy']:.3f} -> "
          f"{new_run['metrics']['val']['accuracy']:.3f}, {len(changed)} answers changed")


# ---- 3. a 2-epoch fine-tune: the curve grows by one point per epoch --------------------------------------

@pytest.fixture(scope="module")
def small(datasets, studio, tmp_path_factory) -> int:
    """A second project: 10 photos per class in class folders (an automatic validation split)."""
    root = tmp_path_factory.mktemp("small") / "photos"
    for cls in CLASSES:
        for src in distinct_photos(datasets / "flowers5" / "all" / cls, 10):
            copy_as(src, root / cls / src.name)
    pid = api(studio, "/projects", "POST", json={"name": "small"})["id"]
    import_folder(studio, pid, root, 10 * len(CLASSES))
    return pid


@pytest.mark.realdata
def test_finetune_two_epochs_live_curve(small, studio, page, browser, screens):
    page.goto(f"{studio.url}/projects/{small}/train")
    assert "Hold out" in page.inner_text(".validation")  # no split of its own: an automatic one
    page.check("input[name=mode][value=finetune]")
    page.fill("#train-epochs", "2")
    page.fill("#train-size", "64")  # tiny images keep a CPU fine-tune short
    page.click(".more summary")
    page.fill("#train-batch", "8")
    page.click("#train-start")
    page.wait_for_url("**/runs/*")
    rid = int(page.url.rstrip("/").split("/")[-1])
    page.wait_for_function("window.studioRun.live.epoch >= 1 || window.studioRun.finished", timeout=RUN_MS)
    seen = page.evaluate("window.studioRun.live.epoch")
    assert seen >= 1, api(studio, f"/runs/{rid}")["error"]
    assert page.locator("#chart-loss circle.point[data-key=train_loss]").count() == seen
    eta = page.inner_text("#live-eta")
    assert "so far" in eta, eta
    screens(page, "runs-02-live")
    second = browser.new_context(viewport=VIEWPORT).new_page()  # a second tab, opened mid-run
    second.goto(f"{studio.url}/runs/{rid}")
    wait_done(page, studio, rid)
    wait_done(second, studio, rid)
    for key in ("train_loss", "val_loss", "val_accuracy"):
        sel = f"circle.point[data-key={key}]"
        assert second.locator(sel).count() == page.locator(sel).count() == 2, key
    second.context.close()
    assert page.evaluate("window.studioRun.pointsAfterEpoch") == [1, 2]  # one more point after each epoch
    for key in ("train_loss", "val_loss"):
        assert page.locator(f"#chart-loss circle.point[data-key={key}]").count() == 2
    for key in ("val_accuracy", "val_macro_precision", "val_macro_f1", "val_confidence"):
        assert page.locator(f"#chart-scores circle.point[data-key={key}]").count() == 2, key
    assert page.locator("#chart-loss polyline[data-key=train_loss]").count() == 1
    run = api(studio, f"/runs/{rid}")
    assert run["status"] == "done" and run["epoch"] == 2
    assert page.locator("#preview-caption").inner_text().startswith("after epoch 2:")


@pytest.mark.realdata
@pytest.mark.slow
def test_queue_cancel_and_resume_an_interrupted_run(small, studio, page):
    """Two runs queued: one trains, the other waits; cancelled from the queue. A fine-tune interrupted by a
    stopped runner (as by a stopped studio) offers Resume, which queues it again from its checkpoint."""
    from imclass.studio.runner import start_runner

    state = studio.app.state.studio
    long = api(studio, f"/projects/{small}/runs", "POST",
               json={"mode": "finetune", "epochs": 30, "image_size": 64, "batch_size": 8})["id"]
    waiting = api(studio, f"/projects/{small}/runs", "POST", json={"mode": "probe"})["id"]
    page.goto(f"{studio.url}/projects/{small}/train")
    page.locator(f"#runs tr[data-run='{long}'] .status:text('Training')").wait_for(timeout=RUN_MS)
    assert page.locator(f"#runs tr[data-run='{waiting}'] .status").inner_text() == "Waiting"
    page.click(f"#runs tr[data-run='{waiting}'] [data-run-action=cancel]")
    page.click("#confirm-ok")
    page.locator(f"#runs tr[data-run='{waiting}'] .status:text('Cancelled')").wait_for()
    assert api(studio, f"/runs/{waiting}")["status"] == "cancelled"
    deadline = time.monotonic() + RUN_MS / 1000
    while api(studio, f"/runs/{long}")["epoch"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    state.runner.stop()  # the studio stopping: the run is interrupted at its next step
    state.runner = start_runner(state)
    run = api(studio, f"/runs/{long}")
    assert run["status"] == "interrupted" and run["resumable"], run
    page.goto(f"{studio.url}/runs/{long}")
    assert "Interrupted" in page.inner_text("#run-status")
    assert page.locator("#chart-loss circle.point[data-key=train_loss]").count() >= 1  # its curve so far
    page.click("#run-resume")
    page.wait_for_function("['queued', 'running'].includes(window.studioRun && window.studioRun.status)")
    page.click("#run-cancel")
    page.click("#confirm-ok")
    page.wait_for_function("document.body.dataset.runDone === 'cancelled' || "
                           "(window.studioRun && window.studioRun.status === 'cancelled')", timeout=RUN_MS)
    assert wait_run(studio, long)["status"] == "cancelled"


# ---- 4. Try it gives what imclass predict gives; the commands shown work; a folder labelled -------------

@pytest.mark.realdata
@pytest.mark.slow
def test_try_it_matches_imclass_predict_and_ship(flowers, studio, probe, browser, tmp_path, screens):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(WAIT_MS)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=studio.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{studio.url}/runs/{probe}")
    with page.expect_download() as dl:
        page.click("#bundle-download")
    dl.value.save_as(tmp_path / "model.zip")
    with zipfile.ZipFile(tmp_path / "model.zip") as z:
        z.extractall(tmp_path / "model")
    photos = sorted(flowers["spare"].iterdir())
    page.set_input_files("#try-file", str(photos[0]))
    page.locator("#try-result").wait_for(state="visible", timeout=120_000)
    tried = page.inner_text("#try-label")
    assert page.locator("#try-topk li").count() == len(CLASSES)
    assert page.locator("#try-cam").get_attribute("src").startswith("data:image/png")
    res = subprocess.run([sys.executable, "-m", "imclass", "predict", "--model", str(tmp_path / "model"),
                          str(photos[0]), "--json"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.splitlines()[0])["label"] == tried
    # the command shown, copied with its button, runs as written (on a folder instead of PHOTOS/)
    page.click("[data-copy=cmd-predict]")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.inner_text("#cmd-predict")
    argv = [a.replace("PHOTOS/", str(flowers["spare"])).replace("labels.csv", str(tmp_path / "labels.csv"))
            for a in shlex.split(copied)]
    assert argv[0] == "imclass"
    res = subprocess.run([sys.executable, "-m", "imclass", *argv[1:]], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len((tmp_path / "labels.csv").read_text().splitlines()) == 1 + len(photos)
    # a bad file says why, no 500
    (tmp_path / "notes.jpg").write_text("not a photo")
    page.set_input_files("#try-file", str(tmp_path / "notes.jpg"))
    page.locator("#try-error").wait_for(state="visible")
    assert "not a usable image" in page.inner_text("#try-error")
    # label a folder of the machine: progress, the CSV; labelling it again resumes (nothing redone)
    page.fill("#label-folder-path", str(flowers["spare"]))
    page.click("#label-folder button[type=submit]")
    done = page.locator("#labellings .task-done")
    done.first.wait_for(timeout=RUN_MS)
    assert f"{len(photos)} labelled" in done.first.inner_text()
    href = done.first.locator("a").get_attribute("href")
    csv_text = httpx.get(studio.url + href, timeout=60).text
    assert csv_text.startswith("path,label,score,error") and len(csv_text.splitlines()) == 1 + len(photos)
    page.click("#label-folder button[type=submit]")
    page.locator("#labellings .task-done").nth(1).wait_for(timeout=RUN_MS)
    again = page.locator("#labellings .task-done").first.inner_text()
    assert "0 labelled" in again, again
    page.fill("#label-folder-path", str(tmp_path / "no-such-folder"))
    page.click("#label-folder button[type=submit]")
    page.locator("#label-folder-error").wait_for(state="visible")
    assert "no such file or folder" in page.inner_text("#label-folder-error")
    # export to ONNX: the parity with the trained model is shown when the task ends
    page.click("[data-export=fp32]")
    parity = page.locator("#exports .task-done .parity tr[data-kind=fp32] td").first
    parity.wait_for(timeout=RUN_MS)
    assert parity.inner_text().endswith("%")
    scroll_to(page, "#ship")
    screens(page, "runs-07-ship-used")
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


# ---- 5. the unknown threshold -----------------------------------------------------------------------------

@pytest.mark.realdata
def test_threshold_slider_moves_the_figures_and_saving_persists(flowers, studio, probe, page, screens):
    import imclass

    preds = api(studio, f"/runs/{probe}/predictions", params={"limit": 5000})
    page.goto(f"{studio.url}/runs/{probe}")
    before = (page.inner_text("#th-coverage"), page.inner_text("#th-accuracy"))
    t = sorted(p["known"] for p in preds)[len(preds) // 2]  # answer about half (the known-class score)
    t = round(round((t + 0.003) / 0.005) * 0.005, 3)  # a step of the slider
    page.fill("#threshold", str(t))
    kept = [p for p in preds if p["known"] >= t]
    coverage = f"{100 * len(kept) / len(preds):.1f}%"
    accuracy = f"{100 * sum(p['correct'] for p in kept) / len(kept):.1f}%"
    page.wait_for_function("c => document.querySelector('#th-coverage').textContent === c", arg=coverage)
    assert (page.inner_text("#th-coverage"), page.inner_text("#th-accuracy")) == (coverage, accuracy) != before
    assert page.inner_text("#th-value") == f"{t:.3f}"
    page.click("#threshold-save")
    page.wait_for_function("document.querySelector('#threshold-state').dataset.kind === 'ok'")
    assert page.inner_text("#threshold-state").startswith(f"Saved in the model: {t:.3f}")
    bundle = api(studio, f"/runs/{probe}")["bundle"]
    assert imclass.load(bundle).spec.unknown_threshold == pytest.approx(t)
    page.reload()
    assert float(page.input_value("#threshold")) == pytest.approx(t)
    assert page.inner_text("#th-coverage") == coverage
    assert page.inner_text("#threshold-state") == f"Saved in the model: {t:.3f}"
    scroll_to(page, "#ship")
    screens(page, "runs-06-ship")
    # never unknown answers everything; back to the fitted threshold, saved again
    page.check("#threshold-off")
    assert page.inner_text("#th-coverage") == "100.0%"
    page.click("#threshold-reset")
    page.click("#threshold-save")
    page.wait_for_function("document.querySelector('#threshold-state').dataset.kind === 'ok'")
    fitted = api(studio, f"/runs/{probe}")["metrics"]["unknown"]["threshold"]
    assert imclass.load(bundle).spec.unknown_threshold == pytest.approx(fitted, abs=0.003)


# ---- bad input: pages answer 404/422 with a message, never 500 -------------------------------------------

@pytest.mark.realdata
def test_bad_requests_to_the_pages(flowers, studio, probe, page, screens):
    pid = flowers["pid"]
    for path, status in [("/runs/999999", 404), ("/runs/abc", 422), ("/runs/compare", 404),
                         ("/runs/compare?a=x&b=y", 404), (f"/runs/compare?a={probe}&b={probe}", 200),
                         (f"/runs/compare?a={probe}&b=999999", 200), ("/projects/999999/train", 404),
                         (f"/projects/{pid}/train?start=999999", 200), (f"/projects/{pid}/train?start=x", 422),
                         (f"/runs/{probe}/partials/nope", 404), (f"/runs/{probe}/review?true=x&predicted=y", 200),
                         (f"/runs/{probe}/review?compare=999999", 200), ("/runs/999999/review", 404),
                         (f"/api/v1/projects/{pid}/images?ids=1,,2", 422), (f"/api/v1/projects/{pid}/images?ids=", 422),
                         ("/projects/999999/partials/runs", 404), ("/runs/99999999999999999999999", 422),
                         ("/runs/compare?a=99999999999999999999999&b=1", 422)]:
        r = httpx.get(studio.url + path, timeout=60)
        assert r.status_code == status, (path, r.status_code, r.text[:300])
    page.goto(f"{studio.url}/runs/compare?a={probe}&b={probe}")
    assert "two different runs" in page.inner_text("main")
    page.goto(f"{studio.url}/runs/{probe}/review?true=x&predicted=y")
    page.locator("#queue-done").wait_for(state="visible")  # an empty list, said so
    # a refused start says why beside the form
    page.goto(f"{studio.url}/projects/{pid}/train")
    page.check("input[name=mode][value=finetune]")
    page.fill("#train-epochs", "0")
    page.click("#train-start")
    page.locator("#train-error").wait_for(state="visible")
    assert "Not started" in page.inner_text("#train-error") and "epochs" in page.inner_text("#train-error")
    # the larger built-in backbones are offered by name (the ones a budget tries after the default)
    page.goto(f"{studio.url}/projects/{pid}/train")
    offered = page.eval_on_selector_all("#train-model option", "els => els.map(e => e.value)")
    assert offered[0] == "" and offered[-1] == "other"
    assert {"lite1", "default+lite1", "lite2"} <= set(offered)
    page.eval_on_selector("#train-model", "e => { e.size = e.options.length; }")  # the list, open, to look at
    screens(page, "runs-01c-train-models")
    page.eval_on_selector("#train-model", "e => { e.size = 0; }")
    # a model the studio cannot load: the run fails and its page says why
    page.select_option("#train-model", "other")
    page.fill("#train-model-other", "no-such-model")
    page.click("#train-start")
    page.wait_for_url("**/runs/*")
    page.wait_for_function("document.body.dataset.runDone", timeout=RUN_MS)
    assert page.inner_text("#run-status") == "Failed"
    assert "unknown model 'no-such-model'" in page.inner_text("#run-head .error")
    assert page.locator("#live").is_hidden() and page.locator("#report").inner_text().strip() == ""
    empty = api(studio, "/projects", "POST", json={"name": "empty"})["id"]
    page.goto(f"{studio.url}/projects/{empty}/train")
    assert page.locator("#train-start").is_disabled()
    assert "at least 2 classes" in page.inner_text("#train-form")
