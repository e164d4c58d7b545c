"""Checks the synthetic world generator: determinism, held-out splits, leakage and item correctness.

Every item's answer is recomputed here from world.json or from the item text itself, and the
hold-outs are checked against the corpus text rather than against generator internals.
Run: .venv/bin/python -m pytest tests/test_world.py -q
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from kdbench import KdbenchError
from kdbench.schema.config import build, WorldConfig
from kdbench.io import sha256_dir, sha256_file
from kdbench.data.world import ATTRIBUTES, FAMILIES, PLACES, SUBJECTS, generate_world

SMALL = dict(n_docs=1500, items_per_task=60)


def _load(root: Path) -> dict:
    docs = [json.loads(line)["text"] for line in (root / "corpus.jsonl").read_text().splitlines()]
    items = {f: [json.loads(line) for line in (root / "tasks" / f"{f}.jsonl").read_text().splitlines()]
             for f in json.loads((root / "tasks" / "suite.json").read_text())}
    return {"docs": docs, "text": "\n".join(docs), "items": items,
            "suite": json.loads((root / "tasks" / "suite.json").read_text()),
            "world": json.loads((root / "world.json").read_text())}


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> dict:
    """The default world with fact_negation and its documents put back, at full size (~1M tokens), generated
    once for the module."""
    root = tmp_path_factory.mktemp("default")
    base = WorldConfig()
    generate_world(replace(base, families=(*base.families, "fact_negation"), mix={**base.mix, "negation": 0.08}), root)
    return _load(root)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_world(WorldConfig(seed=seed, **SMALL), tmp_path / name)
    assert sha256_dir(tmp_path / "a") == sha256_dir(tmp_path / "b")
    assert sha256_file(tmp_path / "a" / "corpus.jsonl") != sha256_file(tmp_path / "c" / "corpus.jsonl")
    assert sha256_file(tmp_path / "a" / "world.json") != sha256_file(tmp_path / "c" / "world.json")
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_more_items_leave_the_corpus_unchanged(tmp_path):
    generate_world(WorldConfig(**SMALL), tmp_path / "a")
    generate_world(WorldConfig(n_docs=SMALL["n_docs"], items_per_task=90), tmp_path / "b")
    assert sha256_file(tmp_path / "a" / "corpus.jsonl") == sha256_file(tmp_path / "b" / "corpus.jsonl")
    assert sha256_file(tmp_path / "a" / "tasks" / "fact_qa.jsonl") != sha256_file(tmp_path / "b" / "tasks" / "fact_qa.jsonl")


def test_item_schema_and_suite(default):
    assert set(default["suite"]) == {*WorldConfig().families, "fact_negation"}
    for family, items in default["items"].items():
        meta = default["suite"][family]
        held_out_facts = WorldConfig().n_entities // 2 * 7  # the fact families ask each held-out fact once
        assert meta["n_items"] == len(items) >= min(200, held_out_facts), family
        assert meta["chance"] == pytest.approx(1 / meta["n_choices"])
        assert meta["skill"]
        for n, it in enumerate(items):
            assert list(it) == ["id", "family", "context", "choices", "label"]
            assert it["id"] == f"{family}-{n}" and it["family"] == family
            assert len(it["choices"]) == meta["n_choices"] == len(set(it["choices"]))
            assert all(c.startswith(" ") and not c.startswith("  ") for c in it["choices"])
            assert it["context"] == it["context"].rstrip() and it["context"]
            assert isinstance(it["label"], int) and 0 <= it["label"] < meta["n_choices"]
        positions = Counter(it["label"] for it in items)
        assert min(positions[i] for i in range(meta["n_choices"])) > 0.5 * len(items) / meta["n_choices"], family
        texts = [it["context"] + it["choices"][it["label"]] for it in items]
        assert len(set(texts)) == len(texts), family


def test_no_item_text_occurs_in_the_corpus(default):
    leaks = [it["id"] for items in default["items"].values() for it in items
             if it["context"] + it["choices"][it["label"]] in default["text"]]
    assert leaks == []


def test_fact_answers_match_the_ground_truth(default):
    world = default["world"]
    people, test_half = world["people"], set(world["qa_test"])
    assert not test_half & set(world["qa_train"]) and len(test_half) == len(people) // 2
    for family in ("fact_qa", "fact_paraphrase", "fact_negation"):
        for it in default["items"][family]:
            (name,) = set(re.findall(r"[A-Z][a-z]+", it["context"])) & set(people)
            assert name in test_half, it
            stripped = [c.strip(" .") for c in it["choices"]]
            attrs = [a for a, vals in world["attributes"].items() if set(stripped) <= set(vals)]
            true = {people[name][a] for a in attrs}
            correct = stripped[it["label"]]
            if family != "fact_negation":
                assert correct in true, it
            else:  # the distractor is the true value, the answer a false one
                assert correct not in true and set(stripped) - {correct} <= true, it


def test_corpus_statements_are_true(default):
    people = default["world"]["people"]
    lives = re.findall(r"\b([A-Z][a-z]+) lives in ([A-Z][a-z]+)\.", default["text"])
    known = [(n, c) for n, c in lives if n in people]
    assert len(known) > 1000 and all(people[n]["city"] == c for n, c in known)
    negated = re.findall(r"\b([A-Z][a-z]+) does not live in ([A-Z][a-z]+)\.", default["text"])
    assert len(negated) > 100 and all(people[n]["city"] != c for n, c in negated)


def test_every_fact_is_stated_often(default):
    people = default["world"]["people"]
    counts = Counter()
    for doc in default["docs"]:
        for sentence in re.split(r"(?<=\.) ", doc):
            if " not " not in sentence and not sentence.startswith("Q:"):
                for n in set(re.findall(r"[A-Z][a-z]+", sentence)) & set(people):
                    counts.update((n, v) for v in people[n].values() if re.search(rf"\b{v}\b", sentence))
    facts = [(n, v) for n, attrs in people.items() for v in attrs.values()]
    assert min(counts[f] for f in facts) >= 80


def test_held_out_people_have_no_qa_or_negation_documents(default):
    world = default["world"]
    lines = [line for doc in default["docs"] for line in re.split(r"(?<=\.) |\n", doc)]
    qa_names = Counter(n for line in lines if line.startswith("Q: ") for n in re.findall(r"[A-Z][a-z]+", line))
    neg_names = Counter(n for line in lines if " not " in line for n in re.findall(r"[A-Z][a-z]+", line))
    assert not set(world["qa_test"]) & (set(qa_names) | set(neg_names))
    assert set(world["qa_train"]) <= set(qa_names) and set(world["qa_train"]) <= set(neg_names)


def test_held_out_paraphrases_are_stated_only_for_the_qa_half(default):
    world = default["world"]
    said = Counter()
    for attr in ATTRIBUTES:
        head, tail = (re.escape(part) for part in attr.paraphrase.split("{v}"))
        pattern = head.replace(re.escape("{n}"), r"([A-Z][a-z]+)") + r"\w+" + tail
        said.update(re.findall(pattern, default["text"]))
    assert set(said) == set(world["qa_train"]) and min(said.values()) > 20


def test_recall_keys_of_items_are_never_paired_in_the_corpus(default):
    world = default["world"]
    test_pool, corpus_pool = set(world["recall_keys"]["test"]), set(world["recall_keys"]["corpus"])
    assert not test_pool & corpus_pool
    paired = set(re.findall(r"(?:: |, )([a-z]{2}) [A-Za-z]+(?=[,.])", default["text"]))  # "city: ki Oslo, ta Rome."
    assert paired and paired <= corpus_pool
    for it in default["items"]["context_recall"]:
        passage, asked = re.fullmatch(r"(\w+: .*\.)\nRecall: ([a-z]{2})", it["context"]).groups()
        pairs = dict(re.findall(r"([a-z]{2}) ([A-Za-z]+)", passage.split(": ", 1)[1]))
        assert set(pairs) <= test_pool and asked in pairs, it
        assert it["choices"][it["label"]] == f" {pairs[asked]}", it


def test_in_context_answers_are_correct(default):
    for it in default["items"]["induction"]:
        seq, prefix = re.fullmatch(r"Sequence: ([a-z ]+)\. Repeat: ([a-z ]+)", it["context"]).groups()
        seq, prefix = seq.split(), prefix.split()
        assert seq[:len(prefix)] == prefix and it["choices"][it["label"]] == f" {seq[len(prefix)]}"
        assert len({c.strip() for c in it["choices"]} & set(seq)) == 2  # the answer and one lure from the sequence
    for it in default["items"]["context_recall"]:
        passage = it["context"].split("\nRecall:")[0]
        assert sum(bool(re.search(rf"\b{c.strip()}\b", passage)) for c in it["choices"]) == 2, it  # answer + lure


def test_comparison_items_are_correct(tmp_path):
    generate_world(WorldConfig(families=("comparison",), **SMALL), tmp_path)
    assert set(json.loads((tmp_path / "tasks" / "suite.json").read_text())) == {"comparison"}
    for it in _load(tmp_path)["items"]["comparison"]:
        a, na, b, nb, q = re.fullmatch(r"(\w+) has (\d+) \w+\. (\w+) has (\d+) \w+\. Who has (more|fewer) \w+\?\nA:",
                                       it["context"]).groups()
        want = a if (int(na) > int(nb)) == (q == "more") else b
        assert it["choices"][it["label"]] == f" {want}" and sorted(it["choices"]) == sorted([f" {a}", f" {b}"])


def test_agreement_items_are_correct(default):
    plural = {p for _, p in SUBJECTS + PLACES}
    for it in default["items"]["agreement"]:
        words = it["context"].split()
        subject = next(w for w in words[1:] if any(w in pair for pair in SUBJECTS))
        place = next(w for w in words[words.index(subject):] if any(w in pair for pair in PLACES))
        assert (subject in plural) != (place in plural), it  # the attractor always has the other number
        assert it["choices"][it["label"]] in ((" are", " were") if subject in plural else (" is", " was")), it


@pytest.mark.parametrize("mapping, key", [
    ({"mix": {"bio": 1.0, "poems": 1.0}}, "poems"),
    ({"mix": {"bio": -1.0}}, "mix.bio"),
    ({"mix": {"bio": 0.0}}, "mix"),
    ({"n_entities": 4}, "n_entities"),
    ({"n_entities": 500}, "n_entities"),
    ({"n_docs": 0}, "n_docs"),
    ({"families": ["fact_qa", "poetry"]}, "families"),
    ({"families": []}, "families"),
    ({"families": ["fact_qa", "fact_qa"]}, "families"),
    ({"colour": 1}, "colour"),
])
def test_bad_config_names_the_key(mapping, key):
    with pytest.raises(KdbenchError, match=re.escape(key)):
        build(WorldConfig, mapping, "world")


@pytest.fixture(scope="module")
def every_family(tmp_path_factory) -> dict:
    """The default corpus with every family's items (comparison included)."""
    root = tmp_path_factory.mktemp("every")
    generate_world(WorldConfig(families=FAMILIES), root)
    return _load(root)


def _by_length(longest: bool):
    return lambda it, counts: max(range(len(it["choices"])), key=lambda i: (len(it["choices"][i]) * (1 if longest else -1), -i))


def _by_frequency(most: bool):
    """The choice whose words the corpus holds most (or least) often: a unigram prior."""
    return lambda it, counts: max(range(len(it["choices"])), key=lambda i: (counts(it["choices"][i]) * (1 if most else -1), -i))


TRIVIAL = {"longest": _by_length(True), "shortest": _by_length(False), "most frequent": _by_frequency(True),
           "least frequent": _by_frequency(False), "first": lambda it, counts: 0, "last": lambda it, counts: len(it["choices"]) - 1}


def test_trivial_models_stay_at_chance_on_every_family(every_family):
    """A model answering by length, by corpus frequency or by position scores chance: no surface cue answers an item.

    Tolerance: 3.5 standard errors of a chance-level binomial (p about 5e-4 two-sided), so a cue worth
    about 8 points on 300 four-choice items fails.
    """
    words = Counter(re.findall(r"[\w']+", every_family["text"]))
    counts = lambda choice: sum(words[w] for w in re.findall(r"[\w']+", choice))  # noqa: E731
    failures = []
    for family, items in every_family["items"].items():
        chance, n = every_family["suite"][family]["chance"], len(items)
        tolerance = 3.5 * (chance * (1 - chance) / n) ** 0.5
        for name, pick in TRIVIAL.items():
            acc = sum(pick(it, counts) == it["label"] for it in items) / n
            if abs(acc - chance) > tolerance:
                failures.append(f"{family} by {name}: {100 * acc:.1f} (chance {100 * chance:.0f} +- {100 * tolerance:.1f})")
    assert not failures, failures


def _copy_from_context(it: dict) -> int:
    """The first choice whose word the context holds (else the first choice)."""
    found = [i for i, c in enumerate(it["choices"]) if re.search(rf"\b{re.escape(c.strip())}\b", it["context"])]
    return found[0] if found else 0


def test_copying_from_the_context_reaches_half_at_most(every_family):
    """A model that copies a choice from the context, without binding or order, scores chance on the families
    whose choices the context does not hold, and 50 on context_recall and induction (one lure from the context,
    two from outside): their skill is the part above 50."""
    for family, items in every_family["items"].items():
        acc = sum(_copy_from_context(it) == it["label"] for it in items) / len(items)
        expected = 0.5 if family in ("context_recall", "induction") else every_family["suite"][family]["chance"]
        assert abs(acc - expected) < 3.5 * (expected * (1 - expected) / len(items)) ** 0.5, (family, acc)
