"""Evaluation through lm-eval: task rendering, a real run of a tiny random model, the result store, errors.

A 2-layer, 32-wide random GPT-2 with a byte-level BPE tokenizer trained on a few
sentences is scored on a 2-family suite of 10 items each; the checks are that lm-eval
loads the rendered YAMLs, that the per-item records agree with lm-eval's accuracy and
with their own log-likelihoods, that weights are hashed as documented, that a stored
result is reused without calling lm-eval, and that bad input gives one-line errors.

Run: .venv/bin/python -m pytest tests/test_evaluate.py -q   (CPU, offline, ~45 s)
"""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="kdbench-test-hf-")  # before datasets reads it

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from kdbench import KdbenchError  # noqa: E402
from kdbench.schema.config import EvalConfig  # noqa: E402
from kdbench.evaluate import evaluate_model, render_tasks
from kdbench.io import read_json, sha256_dir  # noqa: E402

FAMILIES = {"alpha": 3, "beta": 2}  # family -> number of choices
N_ITEMS = 10


def _write_suite(root: Path) -> Path:
    suite = root / "suite"
    suite.mkdir()
    words = ["cat", "dog", "mat", "sun"]
    index = {}
    for family, k in FAMILIES.items():
        with open(suite / f"{family}.jsonl", "w") as f:
            for i in range(N_ITEMS):
                item = {"id": f"{family}-{i}", "family": family, "context": f"the {words[i % 4]} sat on the",
                        "choices": [f" {w}" for w in words[:k]], "label": i % k}
                f.write(json.dumps(item) + "\n")
        index[family] = {"chance": 1 / k, "n_choices": k, "n_items": N_ITEMS, "skill": family}
    (suite / "suite.json").write_text(json.dumps(index))
    return suite


def _write_model(path: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat", "the dog saw the sun", "a mat, a cat, a dog"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    suite = _write_suite(root)
    tasks_dir = root / "tasks"
    names = render_tasks(suite, tasks_dir)
    _write_model(root / "model")
    return {"root": root, "suite": suite, "tasks": tasks_dir, "names": names, "model": root / "model"}


@pytest.fixture(scope="module")
def result(setup):
    cfg = EvalConfig(batch_size=4)
    out = setup["root"] / "out" / "eval.json"
    return evaluate_model(setup["model"], cfg, out, setup["tasks"], store_dir=setup["root"] / "store"), out


def test_render_tasks_writes_absolute_paths_that_lm_eval_loads(setup, tmp_path, monkeypatch):
    assert setup["names"] == ["kdb_alpha", "kdb_beta"]
    spec = yaml.safe_load((setup["tasks"] / "kdb_alpha.yaml").read_text())
    data = Path(spec["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and data == (setup["suite"] / "alpha.jsonl").resolve()
    assert spec["target_delimiter"] == "" and spec["output_type"] == "multiple_choice"
    assert [m["metric"] for m in spec["metric_list"]] == ["acc", "acc_norm"]
    monkeypatch.chdir(tmp_path)  # absolute paths must not depend on the working directory
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_path=str(setup["tasks"]), include_defaults=False).load(["kdb_suite"])
    assert sorted(loaded["tasks"]) == ["kdb_alpha", "kdb_beta"]
    assert len(list(loaded["tasks"]["kdb_beta"].eval_docs)) == N_ITEMS


def test_real_run_records_match_lm_eval(setup, result):
    res, out = result
    assert read_json(out) == res
    assert set(res["tasks"]) == {"kdb_alpha", "kdb_beta"}
    for task, k in (("kdb_alpha", 3), ("kdb_beta", 2)):
        summary, samples = res["tasks"][task], res["samples"][task]
        assert 0.0 <= summary["acc"] <= 1.0 and 0.0 <= summary["acc_norm"] <= 1.0
        assert summary["n"] == len(samples) == N_ITEMS
        assert [s["doc_id"] for s in samples] == list(range(N_ITEMS))
        assert [s["id"] for s in samples] == [f"{task[4:]}-{i}" for i in range(N_ITEMS)]
        assert all(s["n_choices"] == k == len(s["loglik"]) for s in samples)
        assert np.mean([s["acc"] for s in samples]) == pytest.approx(summary["acc"])
        # acc is "the label has the highest log-likelihood", recomputed from the stored numbers
        assert [float(np.argmax(s["loglik"]) == s["label"]) for s in samples] == [s["acc"] for s in samples]
        assert [s["label"] for s in samples] == [i % k for i in range(N_ITEMS)]
    weights_only = setup["root"] / "weights_only"
    weights_only.mkdir()
    shutil.copy(setup["model"] / "model.safetensors", weights_only)
    assert res["model_sha256"] == sha256_dir(weights_only)
    assert res["batch_size"] == 4 and res["limit"] is None and res["dtype"] == "float32"


def test_store_hit_skips_lm_eval(setup, result, monkeypatch):
    res, _ = result

    def fail(*args, **kwargs):
        raise AssertionError("lm-eval must not run for a stored result")

    monkeypatch.setattr("lm_eval.evaluator.simple_evaluate", fail)
    out2 = setup["root"] / "out" / "again.json"
    again = evaluate_model(setup["model"], EvalConfig(batch_size=4), out2, setup["tasks"], store_dir=setup["root"] / "store")
    assert again == res and read_json(out2) == res
    with pytest.raises(AssertionError, match="must not run"):  # a different key does run
        evaluate_model(setup["model"], EvalConfig(batch_size=4, limit=3), out2, setup["tasks"], store_dir=setup["root"] / "store")


def test_batch_size_and_limit(setup, result, tmp_path):
    res, _ = result
    small = evaluate_model(setup["model"], EvalConfig(batch_size=1, limit=5), tmp_path / "b1.json", setup["tasks"])
    for task in res["tasks"]:
        assert small["tasks"][task]["n"] == 5
        for a, b in zip(small["samples"][task], res["samples"][task][:5]):
            assert a["acc"] == b["acc"]
            np.testing.assert_allclose(a["loglik"], b["loglik"], rtol=1e-5, atol=1e-5)


def test_errors(setup, tmp_path):
    cfg = EvalConfig()
    with pytest.raises(KdbenchError, match="does not exist"):
        evaluate_model(tmp_path / "nope", cfg, tmp_path / "o.json", setup["tasks"])
    (tmp_path / "empty_model").mkdir()
    with pytest.raises(KdbenchError, match="no weight files"):
        evaluate_model(tmp_path / "empty_model", cfg, tmp_path / "o.json", setup["tasks"])
    with pytest.raises(KdbenchError, match="include_path"):
        evaluate_model(setup["model"], cfg, tmp_path / "o.json", None)
    empty = tmp_path / "empty_suite"
    empty.mkdir()
    (empty / "suite.json").write_text("{}")
    with pytest.raises(KdbenchError, match="no task families"):
        render_tasks(empty, tmp_path / "t")
    (empty / "suite.json").write_text(json.dumps({"gamma": {"chance": 0.5, "n_choices": 2, "n_items": 0, "skill": "x"}}))
    (empty / "gamma.jsonl").write_text("")
    with pytest.raises(KdbenchError, match="no items"):
        render_tasks(empty, tmp_path / "t")
    assert not (tmp_path / "o.json").exists()


def test_unknown_task_names_close_matches(setup, tmp_path):
    # Indexes lm-eval's built-in tasks (~20 s): a name missing from the local suite is looked up there.
    with pytest.raises(KdbenchError, match="unknown lm-eval task 'arc_eazy'; did you mean arc_easy"):
        evaluate_model(setup["model"], EvalConfig(tasks=("synthetic", "arc_eazy")), tmp_path / "o.json", setup["tasks"])
