"""The embedded synthetic world: a seeded training corpus plus a held-out zero-shot task suite.

The benchmark must run offline and its tasks must probe distinct skills with exact
answers and known chance levels, so the data is generated: invented people with a few
attributes, stated many times in paraphrased biographies, plus document types that
teach in-context skills. Each task family holds out exactly what it tests (the Q/A
format, one paraphrase and negation for half the people, recall keys never paired in
training, unseen sequences and sentences), and no test item's text occurs verbatim in the corpus.
Every component draws from its own seeded stream, so e.g. more test items never
change the corpus.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, get_args

from kdbench import KdbenchError
from kdbench.schema.config import DocType, TaskKind, WorldConfig, WorldFamily, as_dict
from kdbench.io import atomic_path, write_json

FAMILIES: tuple[str, ...] = get_args(WorldFamily)
DOC_TYPES: tuple[str, ...] = get_args(DocType)

@dataclass(frozen=True)
class Attribute:
    """One property every person has, with the sentence forms that mention it ({n} name, {v} value)."""

    name: str
    values: tuple[str, ...]
    statements: tuple[str, ...]  # biography paraphrases
    paraphrase: str  # one more, ending in {v}, that biographies use only for the people with Q/A documents
    question: str  # the single Q/A question form
    negation: str  # the single negated statement form


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("city", ("Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Berlin", "Madrid", "Dublin", "Vienna",
                       "Athens", "Prague"),
              ("{n} lives in {v}.", "{n} has a home in {v}.", "The home of {n} is in {v}."),
              "{n} resides in the city of {v}.", "Where does {n} live?", "{n} does not live in {v}."),
    Attribute("job", ("baker", "farmer", "doctor", "teacher", "pilot", "nurse", "painter", "sailor", "tailor",
                      "writer", "lawyer", "dentist"),
              ("{n} is a {v}.", "{n} works as a {v}.", "By trade, {n} is a {v}."),
              "{n} earns a living as a {v}.", "What is {n}'s job?", "{n} is not a {v}."),
    Attribute("pet", ("cat", "dog", "rabbit", "parrot", "hamster", "turtle", "goldfish", "pony"),
              ("{n} has a pet {v}.", "{n} owns a {v}."), "The pet of {n} is a {v}.",
              "What pet does {n} have?", "{n} does not have a pet {v}."),
    Attribute("colour", ("red", "blue", "green", "yellow", "purple", "orange", "black", "white"),
              ("{n}'s favourite colour is {v}.", "{n} likes the colour {v} best."),
              "The favourite colour of {n} is {v}.", "What is {n}'s favourite colour?", "{n}'s favourite colour is not {v}."),
    Attribute("food", ("soup", "bread", "rice", "cheese", "pasta", "fish", "cake", "beans"),
              ("{n}'s favourite food is {v}.", "{n} loves to eat {v}."), "The food {n} likes most is {v}.",
              "What is {n}'s favourite food?", "{n}'s favourite food is not {v}."),
    Attribute("sport", ("tennis", "football", "golf", "hockey", "rugby", "cricket", "baseball", "handball"),
              ("{n} plays {v}.", "{n}'s sport is {v}."), "On weekends {n} plays {v}.",
              "Which sport does {n} play?", "{n} does not play {v}."),
    Attribute("instrument", ("piano", "violin", "guitar", "drums", "flute", "harp", "trumpet", "cello"),
              ("{n} plays the {v}.", "{n} practises the {v} every day."), "{n}'s instrument is the {v}.",
              "Which instrument does {n} play?", "{n} does not play the {v}."),
)
NAMES: tuple[str, ...] = tuple(
    "Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Leo Maria Nathan Olivia Peter Quinn Rose Sam "
    "Tina Victor Wendy Xavier Yvonne Zach Anna Ben Clara Daniel Ella Felix George Hannah Ivan Julia Kevin Laura "
    "Martin Nora Oscar Paul Ruth Simon Tom Uma Vera Walter Amy Brian Chloe Dylan Eric Fiona Gavin Helen Isaac Jane "
    "Kyle Lucy Mike Owen Ryan Sarah Ursula Vincent Will Zoe Adam Beth Colin Diana Edward Flora Hugo Iris James Kate "
    "Liam Mia Noah Olga Rita Sofia Tara Greg Heidi Ingrid Jonas Lena Marco Nadia Pablo Rachel Steve Theo Wanda".split())
SYLLABLES: tuple[str, ...] = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")
# What induction documents copy: syllables and the attribute values context_recall asks for, so that copying
# is learnt for the tokens the recall items need (a teacher that copied only syllables never recalled a value).
COPY_TOKENS: tuple[str, ...] = SYLLABLES + tuple(v for a in ATTRIBUTES for v in a.values)
OBJECTS = ("apples", "coins", "books", "stamps", "marbles", "shells", "pencils", "cards")
# Agreement grammar: (singular, plural) nouns, so the attractor can carry the opposite number.
SUBJECTS = (("key", "keys"), ("box", "boxes"), ("book", "books"), ("chair", "chairs"), ("lamp", "lamps"),
            ("door", "doors"), ("cup", "cups"), ("letter", "letters"), ("coat", "coats"), ("bag", "bags"),
            ("plate", "plates"), ("bottle", "bottles"), ("clock", "clocks"), ("mirror", "mirrors"),
            ("basket", "baskets"), ("candle", "candles"))
PLACES = (("cabinet", "cabinets"), ("table", "tables"), ("shelf", "shelves"), ("desk", "desks"), ("wall", "walls"),
          ("bed", "beds"), ("sofa", "sofas"), ("stove", "stoves"), ("fence", "fences"), ("barn", "barns"),
          ("tower", "towers"), ("bridge", "bridges"))
PREPOSITIONS = ("near", "behind", "beside", "under", "above", "next to")
ADJECTIVES = ("old", "new", "small", "large", "wooden", "dusty", "tall", "narrow")
REL_VERBS = ("painted", "built", "cleaned", "moved", "bought", "sold", "fixed", "opened")
VERBS = (("is", "are"), ("was", "were"))
PREDICATES = ("on the floor", "very heavy", "in the kitchen", "covered in dust", "quite small", "easy to find",
              "hard to reach", "brand new")
SKILLS = {
    "fact_qa": "recall a person's attribute learned from biographies, asked in a Q/A format seen only for others",
    "fact_paraphrase": "complete a statement of a person's attribute in a phrasing the corpus uses only for others",
    "fact_negation": "complete a negated statement with a false value instead of the person's true one",
    "context_recall": "recall the value paired with a key in a list earlier in the passage, keys never paired in training",
    "induction": "continue copying a novel syllable sequence shown earlier in the context",
    "comparison": "compare two counts stated in context to say who has more or fewer",
    "agreement": "pick the verb number that agrees with a distant subject across an attractor and relative clause",
}
# What a family needs: facts seen in training (knowledge), the context alone (skill), or grammar (syntax).
KINDS: dict[str, TaskKind] = {"fact_qa": "knowledge", "fact_paraphrase": "knowledge", "fact_negation": "knowledge",
                              "context_recall": "skill", "induction": "skill", "comparison": "skill", "agreement": "syntax"}
N_CHOICES = {"fact_qa": 4, "fact_paraphrase": 4, "fact_negation": 2, "context_recall": 4, "induction": 4, "comparison": 2, "agreement": 2}


@dataclass(frozen=True)
class World:
    """Ground truth shared by the corpus and the tasks."""

    people: dict[str, dict[str, str]]  # name -> attribute -> value
    qa_train: tuple[str, ...]  # people whose Q/A and negated statements are in the corpus
    qa_test: tuple[str, ...]  # people only described by biographies; the fact families ask about them
    keys_corpus: tuple[str, ...]  # the syllables that name the pairs of context documents
    keys_test: tuple[str, ...]  # the other syllables: keys only context_recall items pair with values


def generate_world(cfg: WorldConfig, out_dir: Path) -> None:
    """Write corpus.jsonl, tasks/<family>.jsonl, tasks/suite.json and world.json into `out_dir`."""
    out_dir = Path(out_dir)
    world = _make_world(cfg)
    docs, counts = _make_corpus(cfg, world)
    corpus_text = "\n".join(docs)
    suite = {}
    for family in cfg.families:
        items = _make_items(family, cfg, world, corpus_text)
        _write_jsonl(out_dir / "tasks" / f"{family}.jsonl", items)
        suite[family] = {"chance": 1 / N_CHOICES[family], "n_choices": N_CHOICES[family],
                         "n_items": len(items), "skill": SKILLS[family], "kind": KINDS[family]}
    write_json(out_dir / "tasks" / "suite.json", suite)
    _write_jsonl(out_dir / "corpus.jsonl", [{"text": d} for d in docs])
    write_json(out_dir / "world.json", {
        "config": as_dict(cfg), "doc_counts": counts,
        "attributes": {a.name: list(a.values) for a in ATTRIBUTES},
        "people": world.people, "qa_train": world.qa_train, "qa_test": world.qa_test,
        "recall_keys": {"corpus": world.keys_corpus, "test": world.keys_test}})


def _rng(cfg: WorldConfig, component: str) -> random.Random:
    """A stream of its own per component (string seeds are hashed deterministically)."""
    return random.Random(f"{cfg.seed}:{component}")


def _deck(rng: random.Random, items: tuple[str, ...] | list[str]) -> Iterator[str]:
    """Endless draws that go through `items` once per round in fresh random order, so coverage stays even."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def _draw(deck: Iterator[str], k: int) -> list[str]:
    out: list[str] = []
    while len(out) < k:
        if (x := next(deck)) not in out:
            out.append(x)
    return out


def _make_world(cfg: WorldConfig) -> World:
    rng = _rng(cfg, "people")
    names = rng.sample(NAMES, cfg.n_entities)
    # Deal each attribute's values round-robin, so no value dominates and a majority guess stays near chance.
    columns = {a.name: list(itertools.islice(_deck(rng, a.values), cfg.n_entities)) for a in ATTRIBUTES}
    people = {n: {a: columns[a][i] for a in columns} for i, n in enumerate(names)}
    half = cfg.n_entities // 2
    keys = list(SYLLABLES)  # one token each: a key is found by its own token, as induction finds a syllable
    _rng(cfg, "keys").shuffle(keys)
    n_test = len(keys) // 5
    return World(people, tuple(names[:half]), tuple(names[half:]), tuple(keys[n_test:]), tuple(keys[:n_test]))


# ---- corpus ---------------------------------------------------------------------------------------------------

def _make_corpus(cfg: WorldConfig, world: World) -> tuple[list[str], dict[str, int]]:
    """Documents of each type from the type's own stream, interleaved in a seeded order."""
    total = sum(cfg.mix.values())
    shares = {t: cfg.mix.get(t, 0.0) / total * cfg.n_docs for t in DOC_TYPES}
    counts = {t: int(s) for t, s in shares.items()}
    for t in sorted(DOC_TYPES, key=lambda t: counts[t] - shares[t])[:cfg.n_docs - sum(counts.values())]:
        counts[t] += 1  # largest remainder, so the counts add up to n_docs exactly
    streams = {t: _DOC_MAKERS[t](_rng(cfg, f"corpus:{t}"), world) for t in DOC_TYPES}
    order = [t for t in DOC_TYPES for _ in range(counts[t])]
    _rng(cfg, "corpus:order").shuffle(order)
    return [next(streams[t]) for t in order], counts


def _bio_docs(rng: random.Random, world: World) -> Iterator[str]:
    deck = _deck(rng, list(world.people))
    while True:
        sentences = []
        for name in _draw(deck, rng.choice((1, 1, 1, 2, 2, 3))):
            for attr in rng.sample(ATTRIBUTES, rng.randint(3, len(ATTRIBUTES))):
                forms = attr.statements + (attr.paraphrase,) * (name in world.qa_train)
                sentences.append(rng.choice(forms).format(n=name, v=world.people[name][attr.name]))
        rng.shuffle(sentences)
        yield " ".join(sentences)


def _qa_docs(rng: random.Random, world: World) -> Iterator[str]:
    deck = _deck(rng, world.qa_train)
    while True:
        pairs = [f"Q: {attr.question.format(n=name)}\nA: {world.people[name][attr.name]}"
                 for name in _draw(deck, rng.choice((1, 2)))
                 for attr in rng.sample(ATTRIBUTES, rng.randint(2, 4))]
        rng.shuffle(pairs)
        yield "\n".join(pairs)


def _negation_docs(rng: random.Random, world: World) -> Iterator[str]:
    deck = _deck(rng, world.qa_train)
    while True:
        name = next(deck)
        yield " ".join(attr.negation.format(n=name, v=_other_value(rng, attr, world.people[name][attr.name]))
                       for attr in rng.sample(ATTRIBUTES, rng.randint(2, 4)))


def _other_value(rng: random.Random, attr: Attribute, value: str) -> str:
    return rng.choice([v for v in attr.values if v != value])


RECALL = "Recall:"  # before a recalled key: " key" then takes the same token as in the list


def _context_passage(rng: random.Random, keys: tuple[str, ...]) -> tuple[Attribute, list[str], list[str], str]:
    """2-4 distinct syllable keys, each paired with one value of one attribute in a list ("city: ki Oslo, ta
    Rome."); returns (attribute, keys, values, passage)."""
    attr = rng.choice(ATTRIBUTES)
    who = rng.sample(keys, rng.randint(2, 4))
    values = rng.sample(attr.values, len(who))
    return attr, who, values, f"{attr.name}: " + ", ".join(f"{k} {v}" for k, v in zip(who, values)) + "."


def _context_docs(rng: random.Random, world: World) -> Iterator[str]:
    """A passage, then every one of its keys in a shuffled order, each followed by its value."""
    while True:
        _, who, values, passage = _context_passage(rng, world.keys_corpus)
        yield passage + "".join(f"\n{RECALL} {who[i]} {values[i]}" for i in rng.sample(range(len(who)), len(who)))


def _sequence(rng: random.Random, tokens: tuple[str, ...] = SYLLABLES) -> list[str]:
    return rng.sample(tokens, rng.randint(5, 8))


def _induction_docs(rng: random.Random, world: World) -> Iterator[str]:
    """Each sequence is repeated one to three times, each time from a random start: most tokens are copy targets,
    found by the content of the token before them, not by their position (which recall cannot use)."""
    while True:
        yield "\n".join(f"Sequence: {' '.join(s)}." + "".join(f" Repeat: {' '.join(s[rng.randrange(len(s) - 2):])}."
                                                        for _ in range(rng.randint(1, 3)))
                        for s in (_sequence(rng, COPY_TOKENS) for _ in range(rng.randint(2, 4))))


def _comparison(rng: random.Random, world: World) -> tuple[str, str, str]:
    """(context, correct name, other name) of one who-has-more/fewer problem."""
    a, b = rng.sample(list(world.people), 2)
    na, nb = rng.sample(range(2, 10), 2)
    obj, more = rng.choice(OBJECTS), rng.random() < 0.5
    winner, loser = (a, b) if (na > nb) == more else (b, a)
    return (f"{a} has {na} {obj}. {b} has {nb} {obj}. Who has {'more' if more else 'fewer'} {obj}?\nA:",
            winner, loser)


def _comparison_docs(rng: random.Random, world: World) -> Iterator[str]:
    while True:
        yield "\n\n".join(f"{ctx} {ans}" for ctx, ans, _ in (_comparison(rng, world) for _ in range(rng.randint(1, 3))))


def _agreement(rng: random.Random, attract: bool) -> tuple[str, str, str]:
    """(sentence start up to the verb, agreeing verb, other verb); `attract` forces an opposite-number attractor."""
    plural = rng.random() < 0.5
    place_plural = (not plural) if attract or rng.random() < 0.5 else plural
    optional_adjectives = ("",) * 4 + ADJECTIVES  # mostly absent, so sentence lengths vary
    words = ["The", rng.choice(optional_adjectives), rng.choice(SUBJECTS)[plural], rng.choice(PREPOSITIONS),
             "the", rng.choice(optional_adjectives), rng.choice(PLACES)[place_plural]]
    if rng.random() < 0.5:
        words += ["that", rng.choice(NAMES), rng.choice(REL_VERBS)]
    verbs = rng.choice(VERBS)
    return " ".join(w for w in words if w), verbs[plural], verbs[not plural]


def _agreement_docs(rng: random.Random, world: World) -> Iterator[str]:
    while True:
        yield " ".join(f"{start} {verb} {rng.choice(PREDICATES)}."
                       for start, verb, _ in (_agreement(rng, False) for _ in range(rng.randint(3, 5))))


_DOC_MAKERS: dict[str, Callable[[random.Random, World], Iterator[str]]] = {
    "bio": _bio_docs, "qa": _qa_docs, "negation": _negation_docs, "context": _context_docs,
    "induction": _induction_docs, "comparison": _comparison_docs, "agreement": _agreement_docs}


# ---- task items -------------------------------------------------------------------------------------------------

Candidate = tuple[str, str, list[str]]  # context, correct choice, wrong choices (choices start with a space)


def _make_items(family: str, cfg: WorldConfig, world: World, corpus_text: str) -> list[dict]:
    """Draw candidates until `items_per_task` pass: unique, and context+answer never verbatim in the corpus."""
    rng = _rng(cfg, f"task:{family}")
    items: list[dict] = []
    seen: set[str] = set()
    budget = 50 * cfg.items_per_task
    for context, correct, wrong in _CANDIDATES[family](rng, world):
        if len(items) == cfg.items_per_task:
            break
        budget -= 1
        if budget < 0:
            raise KdbenchError(f"task {family}: could not find {cfg.items_per_task} items absent from the corpus; "
                               "lower items_per_task or n_docs")
        text = context + correct
        if text in seen or text in corpus_text:
            continue
        seen.add(text)
        choices = [correct, *wrong]
        rng.shuffle(choices)
        items.append({"id": f"{family}-{len(items)}", "family": family, "context": context,
                      "choices": choices, "label": choices.index(correct)})
    return items


def _split(template: str, name: str) -> tuple[str, str]:
    """A statement template about `name`, split around its value: ("Ann lives in", ".")."""
    head, tail = template.format(n=name, v="\0").split(" \0")
    return head, tail


def _held_out_facts(rng: random.Random, world: World, context: Callable[[str, Attribute], str]) -> Iterator[Candidate]:
    """One item per fact of the held-out people (finite), asked by `context(name, attribute)`."""
    facts = [(n, a) for n in world.qa_test for a in ATTRIBUTES]
    rng.shuffle(facts)
    for name, attr in facts:
        value = world.people[name][attr.name]
        wrong = rng.sample([v for v in attr.values if v != value], 3)
        yield context(name, attr), f" {value}", [f" {v}" for v in wrong]


def _fact_qa(rng: random.Random, world: World) -> Iterator[Candidate]:
    return _held_out_facts(rng, world, lambda name, attr: f"Q: {attr.question.format(n=name)}\nA:")


def _fact_paraphrase(rng: random.Random, world: World) -> Iterator[Candidate]:
    return _held_out_facts(rng, world, lambda name, attr: _split(attr.paraphrase, name)[0])


def _fact_negation(rng: random.Random, world: World) -> Iterator[Candidate]:
    while True:
        name, attr = rng.choice(world.qa_test), rng.choice(ATTRIBUTES)
        value = world.people[name][attr.name]
        head, tail = _split(attr.negation, name)
        yield head, f" {_other_value(rng, attr, value)}{tail}", [f" {value}{tail}"]


def _context_recall(rng: random.Random, world: World) -> Iterator[Candidate]:
    while True:
        attr, who, values, passage = _context_passage(rng, world.keys_test)
        i = rng.randrange(len(who))
        lure = rng.choice([v for v in values if v != values[i]])  # in the passage, paired with another key
        others = [lure, *rng.sample([v for v in attr.values if v not in values], 2)]
        yield f"{passage}\n{RECALL} {who[i]}", f" {values[i]}", [f" {v}" for v in others]


def _induction(rng: random.Random, world: World) -> Iterator[Candidate]:
    while True:
        seq = _sequence(rng)
        k = rng.randint(2, len(seq) - 1)
        lure = rng.choice([s for s in seq if s != seq[k]])  # in the sequence, at another position
        wrong = [lure, *rng.sample([s for s in SYLLABLES if s not in seq], 2)]
        yield f"Sequence: {' '.join(seq)}. Repeat: {' '.join(seq[:k])}", f" {seq[k]}", [f" {s}" for s in wrong]


def _comparison_items(rng: random.Random, world: World) -> Iterator[Candidate]:
    while True:
        context, winner, loser = _comparison(rng, world)
        yield context, f" {winner}", [f" {loser}"]


def _agreement_items(rng: random.Random, world: World) -> Iterator[Candidate]:
    while True:
        start, verb, other = _agreement(rng, True)
        yield start, f" {verb}", [f" {other}"]


_CANDIDATES: dict[str, Callable[[random.Random, World], Iterator[Candidate]]] = {
    "fact_qa": _fact_qa, "fact_paraphrase": _fact_paraphrase, "fact_negation": _fact_negation, "context_recall": _context_recall, "induction": _induction,
    "comparison": _comparison_items, "agreement": _agreement_items}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
