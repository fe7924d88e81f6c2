"""``describe`` (Python and CLI) with a tiny model: region forms, batching, record shape, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import dynrefer
from dynrefer.cli import main
from dynrefer.errors import InputError
from dynrefer.inference.predictor import Predictor
from dynrefer.model.config import tiny_config

CLASSES = ["circle", "square", "star"]
ATTRIBUTES = ["color:red", "color:blue/navy", "pattern:dotted"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = dynrefer.DynRefer(tiny_config(), tags=["red", "circle", "blue"], categories=CLASSES, attributes=ATTRIBUTES)
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "coffee.png"
    Image.fromarray(data.coffee()).save(path)
    return path


@pytest.fixture(scope="module")
def predictor(model_dir):
    return Predictor(model_dir)


def test_record_shape_and_region_forms(predictor, photo):
    mask = np.zeros((400, 600), dtype=bool)
    mask[50:120, 200:330] = True
    regions = [[10, 20, 200, 180], {"bbox": [300, 100, 80, 60], "score": 0.42, "id": "cup"},
               {"polygon": [[400, 200], [550, 210], [480, 390]]}, mask]
    record = predictor.describe(photo, regions, all_scores=True)
    assert (record["image"], record["width"], record["height"]) == (str(photo), 600, 400)
    assert [r["id"] for r in record["regions"]] == [0, "cup", 2, 3]
    boxes = [r["box"] for r in record["regions"]]
    assert boxes[1] == [300.0, 100.0, 380.0, 160.0]
    assert boxes[2] == [400.0, 200.0, 550.0, 390.0]
    assert boxes[3] == [200.0, 50.0, 330.0, 120.0]  # exact mask box
    for region in record["regions"]:
        assert [v["t"] for v in region["views"]][0] == 0.0 and len(region["views"]) == 3
        assert isinstance(region["caption"], str) and 0.0 <= region["caption_score"] <= 1.0
        assert sorted(a[0] for a in region["attributes"]) == sorted(ATTRIBUTES)
        assert region["category"][0] in CLASSES
        assert [c[0] for c in region["categories"]] and len(region["categories"]) == 3
        assert len(region["tags"]) == 3  # --all-scores lists every tag
    assert record["regions"][1]["score"] == 0.42
    assert record["regions"][0]["score"] == record["regions"][0]["caption_score"]


def test_all_scores_does_not_change_the_control_string(predictor, photo, monkeypatch):
    """The caption's control string is the tags above the threshold, with or without all_scores (which
    only lists every tag in the output): same controls, same captions."""
    from dynrefer.model.heads.language import control_string

    head = predictor.model.language_head
    seen, generate = [], head.generate
    monkeypatch.setattr(head, "generate", lambda region, controls, **kw: seen.append(list(controls))
                        or generate(region, controls, **kw))
    regions = [[10, 20, 200, 180], [300, 100, 380, 160], [0, 0, 600, 400]]
    full = predictor.describe(photo, regions, all_scores=True)["regions"]
    scores = sorted(s for r in full for _, s in r["tags"])
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # some tags above, some below
    seen.clear()
    full = predictor.describe(photo, regions, all_scores=True, tag_threshold=threshold)["regions"]
    plain = predictor.describe(photo, regions, tag_threshold=threshold)["regions"]
    above = [[n for n, s in sorted(r["tags"], key=lambda x: (-x[1], x[0])) if s > threshold] for r in full]
    assert any(above) and any(len(a) < 3 for a in above)
    assert seen[0] == seen[1] == [control_string(a) for a in above]
    assert [r["caption"] for r in full] == [r["caption"] for r in plain]
    assert all(len(r["tags"]) == 3 for r in full) and [[n for n, _ in r["tags"]] for r in plain] == above


def test_batched_equals_one_region_at_a_time(predictor, photo):
    regions = [[10, 20, 200, 180], [0, 0, 600, 400], [300, 100, 380, 160], [5, 5, 6, 6]]
    together = predictor.describe(photo, regions, all_scores=True)["regions"]
    for i, spec in enumerate(regions):
        alone = predictor.describe(photo, [spec], all_scores=True)["regions"][0]
        mine = together[i]
        assert alone["views"] == mine["views"]
        assert alone["caption"] == mine["caption"]
        assert abs(alone["caption_score"] - mine["caption_score"]) < 1e-4
        for key in ("attributes", "categories", "tags"):
            got = dict(mine[key])
            assert set(got) == {n for n, _ in alone[key]}
            assert all(abs(got[n] - s) < 1e-4 for n, s in alone[key])


def test_vocabularies_and_tasks(predictor, photo):
    record = predictor.describe(photo, [[10, 20, 200, 180]], tasks="category", classes=["cup", "table"])
    region = record["regions"][0]
    assert set(region) == {"id", "box", "views", "score", "category"}
    assert region["category"][0] in ("cup", "table")
    with pytest.raises(InputError, match="unknown task"):
        predictor.describe(photo, [[1, 1, 5, 5]], tasks="colour")
    with pytest.raises(InputError, match="fuses 3 views"):
        predictor.describe(photo, [[1, 1, 5, 5]], num_views=2)


def test_describe_function_many_images(model_dir, photo):
    out = dynrefer.describe([photo, photo], [[[10, 20, 200, 180]], [[1, 1, 50, 50], [2, 2, 60, 60]]], model=model_dir)
    assert [len(r["regions"]) for r in out] == [1, 2]
    with pytest.raises(InputError, match="one list of regions per image"):
        dynrefer.describe([photo], [], model=model_dir)


def test_cli_describe(model_dir, photo, tmp_path, capsys):
    mask = np.zeros((400, 600), dtype=np.uint8)
    mask[50:120, 200:330] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code = main(["describe", str(photo), "--box", "10", "20", "200", "180", "--mask", str(tmp_path / "mask.png"),
                 "--polygon", "400", "200", "550", "210", "480", "390", "--model", str(model_dir),
                 "--viz", str(tmp_path / "viz.png"), "--out", str(tmp_path / "out.json")])
    out, err = capsys.readouterr()
    assert code == 0 and out == ""
    record = json.loads((tmp_path / "out.json").read_text())
    assert [r["box"] for r in record["regions"]] == [[10.0, 20.0, 200.0, 180.0], [200.0, 50.0, 330.0, 120.0],
                                                     [400.0, 200.0, 550.0, 390.0]]
    assert Image.open(tmp_path / "viz.png").width == 900
    code = main(["describe", str(photo), "--box", "10", "20", "200", "180", "--model", str(model_dir),
                 "--tasks", "caption,category", "--classes", "cup,table"])
    out, _ = capsys.readouterr()
    region = json.loads(out)["regions"][0]
    assert region["category"][0] in ("cup", "table") and "tags" not in region
    # --dtype auto is float32 on a CPU: the same record
    code = main(["describe", str(photo), "--box", "10", "20", "200", "180", "--model", str(model_dir),
                 "--tasks", "caption,category", "--classes", "cup,table", "--dtype", "auto"])
    assert code == 0 and json.loads(capsys.readouterr().out)["regions"][0] == region


@pytest.mark.parametrize("args, reason", [
    (["--model", "{model}"], "give at least one region"),
    (["--box", "5000", "5000", "6000", "6000", "--model", "{model}"], "outside"),
    (["--box", "1", "1", "5", "5", "--model", "{missing}"], "no such folder"),
    (["--box", "1", "1", "5", "5", "--model", "{ckpt}"], "is a file, not a model folder (save_pretrained output) (a "
                                                          "Lightning checkpoint"),
    (["--polygon", "1", "1", "5", "5", "--model", "{model}"], "--polygon needs at least 3"),
    (["--polygon", "1", "1", "5", "5", "9", "9", "7", "--model", "{model}"], "odd count of 7"),
    (["--box", "9", "9", "5", "5", "--model", "{model}"], "inverted"),
    (["--mask", "{small_mask}", "--model", "{model}"], "mask"),
    (["--box", "1", "1", "5", "5", "--model", "{model}", "--tasks", "colour"], "unknown task"),
    (["--box", "1", "1", "5", "5", "--model", "{model}", "--viz", "x.jpg"], ".png"),
    (["--box", "1", "1", "5", "5", "--model", "{model}", "--classes", " , "], "classes is empty"),
])
def test_cli_describe_errors(args, reason, model_dir, photo, tmp_path, capsys):
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "last.ckpt").write_bytes(b"x")
    subst = {"{model}": str(model_dir), "{missing}": str(tmp_path / "nope"),
             "{small_mask}": str(tmp_path / "small.png"),
             "{ckpt}": str(tmp_path / "last.ckpt")}
    code = main(["describe", str(photo)] + [subst.get(a, a) for a in args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("dynrefer: error: ") and reason in err


def test_missing_builtin_model_is_a_clear_error(photo, tmp_path, monkeypatch, capsys):
    from dynrefer.model import io

    monkeypatch.setattr(io, "builtin_dir", lambda: tmp_path / "not_installed")
    assert main(["describe", str(photo), "--box", "1", "1", "5", "5"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "built-in model is not bundled" in err


def test_fixed_views_must_match_the_models_view_count(predictor, photo, model_dir):
    """A fixed policy that gives another number of views than the model fuses is an error naming ts, not
    regions fused across (3 regions used to give 2 records)."""
    boxes = [[10, 20, 200, 180], [300, 40, 420, 200], [50, 250, 150, 390]]
    for ts, count in (([0.5], 2), ([0.1, 0.2, 0.3], 4)):
        with pytest.raises(InputError, match=rf"fuses 3 views per region, but policy 'fixed' with ts=.* gives {count}"):
            predictor.describe(photo, boxes, policy="fixed", ts=ts, tasks="category")
    out = predictor.describe(photo, boxes, policy="fixed", ts=[0.0, 0.5, 1.0], tasks="category")
    assert [[v["t"] for v in r["views"]] for r in out["regions"]] == [[0.0, 0.5, 1.0]] * 3
    cfg = tiny_config()
    cfg.views.policy, cfg.views.fixed_ts = "fixed", [0.5]
    with pytest.raises(InputError, match=r"views.fixed_ts=\[0.5\] gives 2"):
        dynrefer.DynRefer(cfg)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(tag_threshold="x"), "tag_threshold must be a number in"),
    (dict(tag_threshold=1.5), "tag_threshold must be a number in"),
    (dict(tag_threshold=True), "tag_threshold must be a number in"),
    (dict(policy="best"), "unknown view policy"),
    (dict(hash_flavour="md5"), "unknown pHash flavour"),
    (dict(policy="fixed", ts="ab"), "t values must be a list of numbers"),
])
def test_option_errors_are_input_errors(predictor, photo, kwargs, pattern):
    with pytest.raises(InputError, match=pattern):
        predictor.describe(photo, [[10, 20, 200, 180]], **kwargs)


def test_a_bare_zero_one_mask_of_the_image_shape_is_a_region(predictor, photo):
    mask = np.zeros((400, 600), dtype=np.uint8)
    mask[50:120, 200:330] = 1
    out = predictor.describe(photo, [mask], tasks="category")
    assert out["regions"][0]["box"] == [200.0, 50.0, 330.0, 120.0]


def test_cli_mask_files_read_by_value_not_colour(model_dir, photo, tmp_path, capsys):
    """--mask: palette indices, 16-bit values and any colour channel count; transparent pixels do not."""
    index = np.zeros((400, 600), dtype=np.uint8)
    index[50:120, 200:330] = 2  # a VOC-style palette: index 2 is (0, 128, 0), red channel 0
    palette = Image.fromarray(index, "P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    palette.save(tmp_path / "palette.png")
    rgba = np.zeros((400, 600, 4), dtype=np.uint8)
    rgba[50:120, 200:330] = 255  # transparent black elsewhere: was read as the whole image
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray((index > 0).astype(np.uint16)).save(tmp_path / "sixteen.png")  # value 1 of 65535
    alpha_only = np.zeros((400, 600, 4), dtype=np.uint8)
    alpha_only[50:120, 200:330, 3] = 255
    Image.fromarray(alpha_only, "RGBA").save(tmp_path / "alpha.png")
    for name in ("palette", "rgba", "sixteen", "alpha"):
        code = main(["describe", str(photo), "--mask", str(tmp_path / f"{name}.png"), "--model", str(model_dir),
                     "--tasks", "category"])
        out, err = capsys.readouterr()
        assert code == 0, (name, err)
        assert json.loads(out)["regions"][0]["box"] == [200.0, 50.0, 330.0, 120.0], name


def test_views_argument_of_spec_section_2(predictor, photo):
    box = [[10, 20, 200, 180]]
    fixed = predictor.describe(photo, box, views=[0.5, 1.0], tasks="category")["regions"][0]
    assert [v["t"] for v in fixed["views"]] == [0.0, 0.5, 1.0]
    same = predictor.describe(photo, box, policy="fixed", ts=[0.5, 1.0], tasks="category")["regions"][0]
    assert fixed == same
    greedy = predictor.describe(photo, box, views={"policy": "greedy", "num_views": 3}, tasks="category")
    assert greedy == predictor.describe(photo, box, tasks="category")
    with pytest.raises(InputError, match="policy given both"):
        predictor.describe(photo, box, views="greedy", policy="fixed")
    with pytest.raises(InputError, match="unknown views key"):
        predictor.describe(photo, box, views={"n": 3})


@pytest.mark.parametrize("damage, message", [
    ("truncate_weights", "corrupt or truncated safetensors file"),
    ("empty_weights", "corrupt or truncated safetensors file"),
    ("no_vocab", "vocab.json is missing"),
    ("no_tags", "tags.txt is missing"),
    ("bad_vocab", "vocab.json': not valid JSON"),
    ("bad_tokenizer", "cannot load the tokenizer in"),
    ("no_tokenizer", "tokenizer/ is missing"),
])
def test_damaged_model_folders_are_one_line_errors(model_dir, photo, tmp_path, capsys, damage, message):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    weights = folder / "model.safetensors"
    {"truncate_weights": lambda: weights.write_bytes(weights.read_bytes()[:5000]),
     "empty_weights": lambda: weights.write_bytes(b""),
     "no_vocab": lambda: (folder / "vocab.json").unlink(),
     "no_tags": lambda: (folder / "tags.txt").unlink(),
     "bad_vocab": lambda: (folder / "vocab.json").write_text("{"),
     "bad_tokenizer": lambda: next((folder / "tokenizer").glob("tokenizer*.json")).write_text("{"),
     "no_tokenizer": lambda: shutil.rmtree(folder / "tokenizer")}[damage]()
    code = main(["describe", str(photo), "--box", "1", "1", "50", "50", "--model", str(folder), "--tasks", "category"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err


def test_classes_as_one_comma_separated_string(predictor, photo):
    region = predictor.describe(photo, [[10, 20, 200, 180]], tasks="category", classes="cup, table",
                                all_scores=True)["regions"][0]
    assert sorted(name for name, _ in region["categories"]) == ["cup", "table"]
    with pytest.raises(InputError, match="classes must be strings"):
        predictor.describe(photo, [[10, 20, 200, 180]], tasks="category", classes=["cup", 3])


def test_module_describe_loads_the_folder_a_relative_path_names_now(model_dir, photo, tmp_path, monkeypatch):
    import shutil

    for name in ("a", "b"):
        shutil.copytree(model_dir, tmp_path / name / "m")
    monkeypatch.chdir(tmp_path / "a")
    dynrefer.describe(photo, [[10, 20, 200, 180]], model="m", tasks="category")
    from dynrefer.inference import predictor as predictor_mod

    first = predictor_mod._PREDICTORS.copy()
    monkeypatch.chdir(tmp_path / "b")
    dynrefer.describe(photo, [[10, 20, 200, 180]], model="m", tasks="category")
    added = set(predictor_mod._PREDICTORS) - set(first)
    assert len(added) == 1 and str((tmp_path / "b" / "m").resolve()) in added.pop()


def test_a_bfloat16_model_runs_on_the_cpu(model_dir, photo):
    """A model cast as a whole (weights and compute in bfloat16) runs on the CPU: the RoI step, which torchvision's
    CPU kernel cannot do in half precision, runs in float32 (it was an error)."""
    full = Predictor(dynrefer.DynRefer.from_pretrained(model_dir)).describe(photo, [[10, 20, 200, 180]],
                                                                           tasks="category", all_scores=True)
    model = dynrefer.DynRefer.from_pretrained(model_dir).to(torch.bfloat16)
    half = Predictor(model).describe(photo, [[10, 20, 200, 180]], tasks="category", all_scores=True)
    a, b = full["regions"][0], half["regions"][0]
    assert a["category"][0] == b["category"][0]
    assert max(abs(p - dict(b["categories"])[c]) for c, p in a["categories"]) < 0.05


def test_a_folder_with_its_frozen_parts_stands_alone(photo, tmp_path):
    """A model built from a local LM folder and saved with every tensor (the default) loads and describes the
    same once that LM folder is gone: its architecture is saved beside it (language_config.json)."""
    import shutil

    from transformers import T5Config, T5ForConditionalGeneration

    from dynrefer.model.heads.language import build_char_tokenizer

    torch.manual_seed(0)
    lm_dir = tmp_path / "t5"
    tokenizer = build_char_tokenizer()
    T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=48, num_layers=1,
                                        num_decoder_layers=1, num_heads=4, decoder_start_token_id=0,
                                        pad_token_id=0, eos_token_id=1)).save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    cfg = tiny_config()
    cfg.language.path, cfg.language.model_config, cfg.language.tokenizer_path = str(lm_dir), None, None
    model = dynrefer.DynRefer(cfg, tags=["red", "circle"], categories=CLASSES)
    assert not any(p.requires_grad for p in model.language_head.lm.parameters())  # a pretrained LM: frozen
    folder = model.save_pretrained(tmp_path / "m")
    box = [[10, 20, 200, 180]]
    before = Predictor(dynrefer.DynRefer.from_pretrained(folder)).describe(photo, box)
    shutil.rmtree(lm_dir)
    loaded = dynrefer.DynRefer.from_pretrained(folder)
    assert not any(p.requires_grad for p in loaded.language_head.lm.parameters())
    after = Predictor(loaded).describe(photo, box)
    assert after["regions"][0]["caption"] == before["regions"][0]["caption"]
    assert after["regions"][0]["caption_score"] == pytest.approx(before["regions"][0]["caption_score"], abs=1e-6)
