"""The hardening battery (issue 27): what a demanding user does to the command line, as tests that reproduce
each failure found, and the cases that already held, so that none of them regresses.

The error contract: bad input is one ``dynrefer: error:`` line on stderr and exit 2, a bug one
``dynrefer: internal error:`` line and exit 1, and every input is checked before the model loads. Kill and
full-disk cases are marked ``slow`` (run by default and in CI).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynrefer.cli import main
from dynrefer.errors import InputError
from dynrefer.inference.predict import output_lock, run_predict


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from skimage import data

    root = tmp_path_factory.mktemp("battery")
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()[::4, ::4]).save(root / f"{name}.png")
    return root


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, kind: str = "error") -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dynrefer: {kind}: "), err
    return lines[0]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def no_model(monkeypatch):
    """Fail the test if a model is loaded (the inputs must be refused before)."""
    from dynrefer.inference import predictor

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(predictor.Predictor, "__init__", refuse)


# ------------------------------------------------------------------------ 1. one image in two records
def test_the_same_image_in_two_records_is_described_per_record(tiny_model_dir, images, tmp_path):
    boxes_a = [{"box": [5, 5, 60, 60]}, {"box": [10, 20, 100, 90]}]
    boxes_b = [{"box": [30, 30, 120, 110]}, {"id": 1, "box": [0, 0, 40, 40]}, {"box": [50, 10, 90, 70]}]
    records = [{"image": "astronaut.png", "regions": boxes_a},
               {"image": "coffee.png", "regions": [{"box": [1, 1, 50, 50]}]},
               {"image": "astronaut.png", "regions": boxes_b}]
    data = write_jsonl(images / "twice.jsonl", records)
    out = tmp_path / "out.jsonl"
    summary = run_predict(tiny_model_dir, data, out, num_workers=0, progress=False)
    assert summary["predicted"] == 6
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in written] == ["astronaut.png", "coffee.png", "astronaut.png"]
    assert [len(r["regions"]) for r in written] == [2, 1, 3]
    # each record's regions are its own: the same as predicting that record alone
    alone = tmp_path / "alone.jsonl"
    run_predict(tiny_model_dir, write_jsonl(images / "alone.jsonl", [records[2]]), alone, num_workers=0,
                progress=False)
    only = json.loads(alone.read_text())
    assert [r["box"] for r in written[2]["regions"]] == [r["box"] for r in only["regions"]]
    assert [r["caption"] for r in written[2]["regions"]] == [r["caption"] for r in only["regions"]]


def test_duplicate_region_ids_in_a_record_are_refused(tiny_model_dir, images, tmp_path, monkeypatch):
    no_model(monkeypatch)
    data = write_jsonl(images / "dup_ids.jsonl", [{"image": "astronaut.png", "regions": [
        {"id": 3, "box": [1, 1, 20, 20]}, {"id": 3, "box": [5, 5, 30, 30]}]}])
    with pytest.raises(InputError, match=r"record 1 \(astronaut.png\): regions 0 and 1 have the same id 3"):
        run_predict(tiny_model_dir, data, tmp_path / "o.jsonl", num_workers=0, progress=False)


# ------------------------------------------------------------------------ 2. two runs on one --out
def test_a_second_run_on_the_same_out_stops_at_once(tiny_model_dir, images, tmp_path, capsys, monkeypatch):
    data = write_jsonl(images / "lock.jsonl", [{"image": "chelsea.png", "regions": [{"box": [3, 3, 40, 40]}]}])
    out = tmp_path / "out.jsonl"
    argv = ["predict", "--model", tiny_model_dir, "--data", data, "--out", out, "--num-workers", "0"]
    with output_lock(out):  # another run holds it
        with monkeypatch.context() as m:
            no_model(m)
            code, _, err = run_cli(argv, capsys)
        assert code == 2 and "another run is writing" in one_error_line(err) and str(os.getpid()) in err
        assert not out.exists()
    code, _, err = run_cli(argv, capsys)  # released: the next run works
    assert code == 0 and err == "" and out.is_file()


@pytest.mark.slow
def test_the_lock_goes_with_a_killed_process(tmp_path):
    out = tmp_path / "o.jsonl"
    code = ("import sys, time; from pathlib import Path; from dynrefer.inference.predict import output_lock\n"
            f"with output_lock(Path({str(out)!r})):\n    print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match="another run"):
            with output_lock(out):
                pass
        proc.kill()
        proc.wait(10)
        with output_lock(out):  # free again
            pass
    finally:
        proc.kill()
        proc.stdout.close()


# ------------------------------------------------------------------------ 3. hostile checkpoints
class Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/dynrefer_battery_pwned",))


def _captioned_data(root: Path) -> Path:
    img = Image.new("RGB", (64, 64), (200, 30, 30))
    img.save(root / "red.png")
    records = [{"image": "red.png", "split": split, "regions": [{"box": [4, 4, 40, 40], "captions": ["a red square"],
                                                                   "tags": ["red"]}] * 2} for split in ("train", "val")]
    (root / "tags.txt").write_text("red\nsquare\n")
    return write_jsonl(root / "data.jsonl", records)


def test_a_hostile_checkpoint_is_refused_in_one_line(tmp_path):
    import torch

    data = _captioned_data(tmp_path)
    ckpt = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": Hostile()}, ckpt)
    marker = Path("/tmp/dynrefer_battery_pwned")
    marker.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "dynrefer.cli", "validate", "--model.model", "tiny",
                           "--model.tags_file", str(tmp_path / "tags.txt"), "--data.val_file", str(data),
                           "--data.size", "64", "--data.batch_size", "2", "--data.num_workers", "0",
                           "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--ckpt_path", str(ckpt)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert not marker.exists()
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert f"refusing to load checkpoint '{ckpt}'" in line and "posix.system" in line
    assert "weights_only=False" not in line and "weights_only` set to `False" not in line


def test_a_hostile_checkpoint_in_validate_names_the_refused_global(tmp_path):
    import pickle

    from dynrefer.commands.train import _unpickling_reason

    err = pickle.UnpicklingError("Weights only load failed. ... Re-running `torch.load` with `weights_only` set to "
                                 "`False` will likely succeed ...\nWeightsUnpickler error: Unsupported global: "
                                 "GLOBAL posix.system was not an allowed global by default.")
    assert _unpickling_reason(err) == "Unsupported global: GLOBAL posix.system"
    newer = pickle.UnpicklingError("Weights only load failed. ... Re-running `torch.load` with `weights_only` set to "
                                   "`False` will likely succeed\n\nTrying to load unsupported GLOBAL posix.system "
                                   "whose module posix is blocked.\n\nCheck the documentation")
    assert _unpickling_reason(newer) == "unsupported GLOBAL posix.system whose module posix is blocked"


# ------------------------------------------------------------------------ 4. fit / validate: one line
def test_fit_and_validate_errors_are_one_line_without_banners(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  model: tiny\ndata:\n  train_file: missing.jsonl\n  batch_size: 2\n"
                      "trainer:\n  max_epochs: 1\n  accelerator: cpu\n")
    proc = subprocess.run([sys.executable, "-m", "dynrefer.cli", "fit", "--config", str(config)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "missing.jsonl" in line and "Seed set" not in proc.stderr and "Tip" not in proc.stderr


# ------------------------------------------------------------------------ 5. kill -9 leaves no worker
def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_worker_dies_with_its_parent():
    """The mechanism, on a process that would otherwise outlive its parent by minutes: the DataLoader workers'
    ``worker_init_fn`` asks for SIGKILL when the parent dies (a worker blocked on a pipe or in a thread never
    reaches PyTorch's own parent check)."""
    code = ("import os, time, multiprocessing as mp\n"
            "from dynrefer.inference.predict import die_with_parent\n"
            "def child():\n    die_with_parent(0)\n    time.sleep(300)\n"
            "if __name__ == '__main__':\n"
            "    p = mp.get_context('fork').Process(target=child); p.start()\n"
            "    print(p.pid, flush=True); time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        time.sleep(0.5)
        assert _alive(child)
        proc.kill()
        proc.wait(10)
        deadline = time.time() + 5
        while time.time() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        proc.kill()
        proc.stdout.close()


@pytest.mark.slow
def test_kill_9_of_predict_leaves_no_worker(tiny_model_dir, images, tmp_path):
    records = [{"image": f"{name}.png", "regions": [{"box": [1 + k, 1, 40 + k, 40]} for k in range(3)]}
               for name in ("astronaut", "coffee", "chelsea") * 30]
    data = write_jsonl(images / "many.jsonl", records)
    proc = subprocess.Popen([sys.executable, "-m", "dynrefer.cli", "predict", "--model", str(tiny_model_dir),
                             "--data", str(data), "--out", str(tmp_path / "o.jsonl"), "--num-workers", "2",
                             "--batch-size", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        workers: set[int] = set()
        while time.time() < deadline and len(workers) < 2:
            workers = _children(proc.pid)
            time.sleep(0.2)
        assert len(workers) >= 2, "the DataLoader workers did not start"
        part = tmp_path / "o.jsonl.parts" / "rank0.jsonl"
        while time.time() < deadline and not (part.is_file() and part.read_text().count("\n") >= 6):
            time.sleep(0.1)  # mid-run: the workers have batches queued for the main process
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
    finally:
        proc.kill()
        proc.communicate(timeout=30)  # returns: no orphan holds the pipes


# ------------------------------------------------------------------------ 6. boxes in exponent notation
def test_huge_negative_boxes_are_read_and_clipped(tiny_model_dir, images, capsys):
    code, out, err = run_cli(["describe", images / "coffee.png", "--box", "-1e30", "-1e30", "1e30", "1e30",
                              "--model", tiny_model_dir, "--tasks", "category"], capsys)
    assert code == 0 and err == ""
    record = json.loads(out)
    assert record["regions"][0]["box"] == [0.0, 0.0, float(record["width"]), float(record["height"])]
    code, out, _ = run_cli(["views", images / "coffee.png", "--box", "-5.5", "-1.5E-3", "20", "2e1"], capsys)
    assert code == 0 and json.loads(out)["regions"][0]["box"] == [0.0, 0.0, 20.0, 20.0]


# ------------------------------------------------------------------------ 7. describe --out, full disk
@pytest.mark.slow
def test_describe_out_on_a_full_disk_leaves_nothing(tiny_model_dir, images, tmp_path, capsys, monkeypatch):
    import dynrefer.records as records

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "fsync", full)
    out = tmp_path / "result.json"
    code, _, err = run_cli(["describe", images / "coffee.png", "--box", "1", "1", "30", "30", "--model",
                            tiny_model_dir, "--tasks", "category", "--out", out], capsys)
    assert code == 2 and "No space left on device" in one_error_line(err)
    assert list(tmp_path.iterdir()) == []  # no OUT, no temporary file
    monkeypatch.undo()
    for _ in range(2):  # two runs in turn: distinct temporary names, the file replaced whole
        code, _, _ = run_cli(["describe", images / "coffee.png", "--box", "1", "1", "30", "30", "--model",
                              tiny_model_dir, "--tasks", "category", "--out", out], capsys)
        assert code == 0
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"] and json.loads(out.read_text())["regions"]


@pytest.mark.slow
def test_predict_on_dev_full_is_one_line(tiny_model_dir, images, tmp_path, capsys, monkeypatch):
    """A full disk while predict appends its parts (simulated: ENOSPC on write)."""
    data = write_jsonl(images / "full.jsonl", [{"image": "coffee.png", "regions": [{"box": [1, 1, 30, 30]}]}])
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        if str(path).endswith("rank0.jsonl") and "a" in mode:
            return real_open("/dev/full", "w", *args, **kwargs)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_open)
    code, _, err = run_cli(["predict", "--model", tiny_model_dir, "--data", data, "--out", tmp_path / "o.jsonl",
                            "--num-workers", "0"], capsys)
    assert code == 2 and "No space left on device" in one_error_line(err)


# ------------------------------------------------------------------------ 8. record width / height types
@pytest.mark.parametrize("width, shown", [("256", "'256' (str)"), (256.5, "256.5 (float)"), (0, "0 (int)"),
                                          (True, "True (bool)")])
def test_record_sizes_must_be_integers(tiny_model_dir, images, tmp_path, monkeypatch, width, shown):
    no_model(monkeypatch)
    data = write_jsonl(images / "w.jsonl", [{"image": "coffee.png", "width": width, "height": 100,
                                             "regions": [{"box": [1, 1, 20, 20]}]}])
    with pytest.raises(InputError, match=rf"'width' must be a positive integer \(pixels\), got {shown}".replace(
            "(str)", r"\(str\)").replace("(float)", r"\(float\)").replace("(int)", r"\(int\)").replace(
            "(bool)", r"\(bool\)")):
        run_predict(tiny_model_dir, data, tmp_path / "o.jsonl", num_workers=0, progress=False)


# ------------------------------------------------------------------------ fail fast, before the model
@pytest.mark.parametrize("case", ["missing_image", "corrupt_image", "bad_region", "outside_region", "size_mismatch",
                                  "out_is_folder", "empty_dataset", "classes_file"])
def test_predict_refuses_bad_input_before_the_model_loads(tiny_model_dir, images, tmp_path, capsys, monkeypatch,
                                                          case):
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    region = {"box": [1, 1, 20, 20]}
    records = {
        "missing_image": [{"image": "nope.png", "regions": [region]}],
        "corrupt_image": [{"image": "corrupt.png", "regions": [region]}],
        "bad_region": [{"image": "coffee.png", "regions": [region]}, {"image": "chelsea.png",
                                                                      "regions": [{"box": [5, 5, 1, 1]}]}],
        "outside_region": [{"image": "coffee.png", "regions": [{"box": [900, 900, 950, 950]}]}],
        "size_mismatch": [{"image": "coffee.png", "width": 7, "height": 9, "regions": [region]}],
        "out_is_folder": [{"image": "coffee.png", "regions": [region]}],
        "empty_dataset": [{"image": "coffee.png", "regions": []}],
        "classes_file": [{"image": "coffee.png", "regions": [region]}],
    }[case]
    data = write_jsonl(tmp_path / "in.jsonl", records)
    for name in ("coffee.png", "chelsea.png", "corrupt.png"):
        (tmp_path / name).write_bytes((images / name).read_bytes())
    out = tmp_path / ("folder" if case == "out_is_folder" else "o.jsonl")
    out.mkdir(exist_ok=True) if case == "out_is_folder" else None
    argv = ["predict", "--model", tiny_model_dir, "--data", data, "--out", out, "--num-workers", "0"]
    if case == "classes_file":
        argv += ["--config", write_jsonl(tmp_path / "c.yaml", []).with_suffix(".yaml")]
        (tmp_path / "c.yaml").write_text("classes_file: no_such_classes.txt\n")
    no_model(monkeypatch)
    started = time.perf_counter()
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    line = one_error_line(err)
    expect = {"missing_image": "record 1 (nope.png)", "corrupt_image": "record 1 (corrupt.png)",
              "bad_region": "record 2 (chelsea.png)", "outside_region": "record 1 (coffee.png)",
              "size_mismatch": "the record says 7x9", "out_is_folder": "is a folder",
              "empty_dataset": "no region to describe", "classes_file": "no_such_classes.txt"}[case]
    assert expect in line
    assert time.perf_counter() - started < 5


def test_an_empty_dataset_is_accepted_when_asked(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", [])
    out = tmp_path / "o.jsonl"
    code, stdout, err = run_cli(["predict", "--model", tiny_model_dir, "--data", data, "--out", out,
                                 "--allow-empty"], capsys)
    assert code == 0 and err == "" and out.read_text() == "" and json.loads(stdout)["regions"] == 0


# ------------------------------------------------------------------------ the cases that already held
@pytest.mark.parametrize("argv, expect", [
    (["describe", "{img}/nope.png", "--box", "1", "1", "5", "5"], "file not found"),
    (["describe", "{img}/coffee.png"], "give at least one region"),
    (["describe", "{img}/coffee.png", "--box", "1", "2", "3"], "expected 4 arguments"),
    (["describe", "{img}/coffee.png", "--box", "5", "5", "1", "1"], "box"),
    (["describe", "{img}/coffee.png", "--box", "nan", "1", "5", "5"], "box"),
    (["describe", "{img}/coffee.png", "--box", "900", "900", "950", "990"], "box"),
    (["describe", "{img}/coffee.png", "--polygon", "1", "1", "5"], "--polygon"),
    (["describe", "{img}/coffee.png", "--box", "1", "1", "5", "5", "--tasks", "colour"], "unknown task"),
    (["describe", "{img}/coffee.png", "--box", "1", "1", "5", "5", "--model", "{img}/no_model"], "no_model"),
    (["describe", "{img}/coffee.png", "--box", "1", "1", "5", "5", "--model", "{img}/coffee.png"], "is a file"),
    (["describe", "{img}/coffee.png", "--box", "1", "1", "5", "5", "--out", "{img}"], "is a folder"),
    (["describe", "{img}/coffee.png", "--box", "1", "1", "5", "5", "--viz", "x.jpg"], "--viz"),
    (["views", "{img}/coffee.png", "--box", "1", "1", "5", "5", "--num-views", "40"], "--num-views"),
    (["evaluate", "caption", "--pred", "{img}/none.jsonl", "--ground-truth", "{img}/none.jsonl"], "none.jsonl"),
    (["nonsense"], "invalid choice"),
])
def test_bad_input_is_one_line_before_the_model(images, capsys, monkeypatch, argv, expect):
    no_model(monkeypatch)
    code, out, err = run_cli([a.replace("{img}", str(images)) for a in argv], capsys)
    assert code == 2 and out == ""
    assert expect in one_error_line(err)


def test_a_bug_is_an_internal_error_not_bad_input(images, capsys, monkeypatch):
    from dynrefer import view_selection

    def broken(*args, **kwargs):
        raise ValueError("a bug, not the user's input")

    monkeypatch.setattr(view_selection, "select_views", broken)
    argv = ["views", images / "coffee.png", "--box", "1", "1", "20", "20"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    line = one_error_line(err, kind="internal error")
    assert "ValueError: a bug" in line and "DYNREFER_DEBUG=1" in line
    monkeypatch.setenv("DYNREFER_DEBUG", "1")
    with pytest.raises(ValueError, match="a bug"):
        main([str(a) for a in argv])


def test_no_third_party_notices_unless_verbose(tiny_model_dir, images, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl",
                       [{"image": str(images / "coffee.png"), "regions": [{"box": [1, 1, 30, 30]}]}])
    base = [sys.executable, "-m", "dynrefer.cli"]
    args = ["predict", "--model", str(tiny_model_dir), "--data", str(data), "--num-workers", "0"]
    quiet = subprocess.run(base + args + ["--out", str(tmp_path / "a.jsonl")], capture_output=True, text=True,
                           timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = subprocess.run(base + ["--verbose"] + args + ["--out", str(tmp_path / "b.jsonl")], capture_output=True,
                          text=True, timeout=300)
    assert loud.returncode == 0 and loud.stderr != ""  # Lightning's notices, shown on request
    assert np.array_equal(*(np.array(json.loads((tmp_path / f).read_text())["regions"][0]["views"][0]["crop"])
                            for f in ("a.jsonl", "b.jsonl")))



# ------------------------------------------------------------------------ found by the review of the above
@pytest.mark.slow
def test_two_processes_with_workers(tiny_model_dir, images, tmp_path):
    """--devices 2 on a CPU with DataLoader workers: the workers of each spawned process live (their parent is that
    process, not the command's)."""
    records = [{"image": f"{name}.png", "regions": [{"box": [1, 1, 30, 30]}]} for name in ("astronaut", "coffee")]
    data = write_jsonl(images / "two.jsonl", records)
    summary = run_predict(tiny_model_dir, data, tmp_path / "o.jsonl", devices=2, num_workers=1, progress=False)
    assert summary["predicted"] == 2 and len((tmp_path / "o.jsonl").read_text().splitlines()) == 2


def test_out_in_a_new_folder_and_float_sizes(tiny_model_dir, images, tmp_path):
    from PIL import Image as PILImage

    w, h = PILImage.open(images / "coffee.png").size
    data = write_jsonl(images / "floats.jsonl", [{"image": "coffee.png", "width": float(w), "height": float(h),
                                                  "regions": [{"box": [1, 1, 30, 30]}]}])
    out = tmp_path / "new" / "folder" / "o.jsonl"
    assert run_predict(tiny_model_dir, data, out, num_workers=0, progress=False)["predicted"] == 1
    assert out.is_file()


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG", "PNG"])
def test_header_size_is_the_loaded_size_for_rotated_images(tmp_path, fmt):
    from PIL import Image as PILImage

    from dynrefer.images import image_file_size, load_image

    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotated by 90 degrees
    path = tmp_path / f"rotated.{fmt.lower()}"
    PILImage.new("RGB", (200, 100), "red").save(path, fmt, exif=exif)
    loaded = load_image(path)
    assert image_file_size(path) == (int(loaded.shape[2]), int(loaded.shape[1])) == (100, 200)
