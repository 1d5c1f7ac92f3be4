"""The zoo's synthetic world: entity facts, 2-digit addition and product reviews, plus the gold reward.

Every text here is a sequence of whitespace-separated words, and every word is one token (the tokenizer is a
word-level model trained on this corpus), so `decode(encode(text)) == text` and exact match needs no normaliser.

Why the world looks like this (docs/zoo.md; measured in two prototypes):
- names are three syllables, so knowing a fact is a matter of capacity (a small model knows few, a large most);
- a third of the entities also appear in pre-training as `Q : ... A : city .`, so the large base learns to
  *extract* facts in Q/A form; fine-tuning then only has to teach the terminator (`<eos>` instead of `.`);
- `<eos>` separates pre-training documents, so bases give it real probability;
- SFT, pre-training-Q/A and evaluation entities (and addition pairs, review products) are disjoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]


def _words(text: str) -> list[str]:
    return text.split()


CONSONANTS = _words("b d f g k l m n p r s t v z")
VOWELS = _words("a e i o u")
SYLLABLES = [c + v for c in CONSONANTS for v in VOWELS]  # 70 name pieces, each one token
COLOURS = _words("red blue green yellow purple orange pink brown black white grey teal")
CITY_HEADS = _words("Bar Cor Dun Fal Gor Hal Jor Kel Lun Mor Nor Pel Quin Ros Sal Tor Val Wen Yor Zan")
CITY_TAILS = _words("ton by mere ford wick ham dale")
POSITIVE = _words("good great lovely excellent superb nice solid perfect")
NEGATIVE = _words("bad awful poor terrible broken weak ugly flimsy")
NEUTRAL = _words("big small heavy light new old plain round")
PRODUCTS = _words(
    "lamp chair table phone radio kettle clock camera bottle jacket shoe bag pen cup bike desk sofa watch "
    "knife plate mirror guitar drum fan heater blender toaster oven spoon fork bowl hat scarf glove boot "
    "tent rope ladder hammer saw drill brush comb towel pillow blanket candle basket"
)
REVIEW_TEMPLATES = ["review the {p} .", "what do you think of the {p} ?", "describe the {p} ."]
FLUENCY_PENALTY = -3.0  # reward of any completion that is not one well-formed review
OFF_TOPIC_COST = 0.5  # a well-formed review of another product than the one asked about


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world; part of the build's content hash."""

    entities: int = 1200
    cities: int = 40
    colours: int = 12
    split: tuple[float, float] = (0.3, 0.3)  # fraction of entities for SFT, for pre-training Q/A; rest is eval
    eval_entities: int = 480  # at most this many held-out entities are evaluated
    addition_eval: int = 400  # held-out (a, b) pairs, never seen in pre-training or SFT
    addition_sft: int = 1500
    products_eval: int = 16  # review products held out of SFT and DPO prompts
    doc_eos_rate: float = 0.25  # a document ends after this fraction of sentences
    mix: tuple[float, float, float] = (0.6, 0.25, 0.15)  # pre-training share: facts, addition, reviews
    corpus_tokens: int = 1_500_000


@dataclass
class Entity:
    name: str
    city: str
    colour: str


@dataclass
class World:
    """Everything sampled from the seed: who lives where, which sums are held out, which products are eval."""

    config: WorldConfig
    seed: int
    entities: list[Entity]
    groups: dict[str, list[Entity]]  # sft / pretrain_qa / prose_only / eval
    cities: list[str]
    pairs: dict[str, list[tuple[int, int]]]  # sft / pretrain / eval
    products: dict[str, list[str]]  # train / eval
    rng: random.Random = field(repr=False, default_factory=random.Random)


def make_world(config: WorldConfig, seed: int) -> World:
    rng = random.Random(seed)
    cities = [h + t for h in CITY_HEADS for t in CITY_TAILS]
    rng.shuffle(cities)
    cities = sorted(cities[: config.cities])
    colours = COLOURS[: config.colours]
    names: set[str] = set()
    while len(names) < config.entities:
        names.add(" ".join(rng.choice(SYLLABLES) for _ in range(3)))
    ents = [Entity(n, rng.choice(cities), rng.choice(colours)) for n in sorted(names)]
    rng.shuffle(ents)
    n_sft, n_qa = (round(f * len(ents)) for f in config.split)
    rest = ents[n_sft + n_qa :]
    groups = {
        "sft": ents[:n_sft],
        "pretrain_qa": ents[n_sft : n_sft + n_qa],
        "eval": rest[: config.eval_entities],
        "prose_only": rest[config.eval_entities :],
    }
    all_pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(all_pairs)
    n_eval = config.addition_eval
    pairs = {
        "eval": all_pairs[:n_eval],
        "sft": all_pairs[n_eval : n_eval + config.addition_sft],
        "pretrain": all_pairs[n_eval + config.addition_sft :],
    }
    prods = list(PRODUCTS)
    rng.shuffle(prods)
    products = {"eval": sorted(prods[: config.products_eval]), "train": sorted(prods[config.products_eval :])}
    return World(config, seed, ents, groups, cities, pairs, products, rng)


def vocabulary(world: World) -> list[str]:
    """Every word the world can produce (the tokenizer is trained on a corpus that contains them all)."""
    words = {"Q", "A", ":", "?", ".", "+", "=", "plus", "is", "the", "and", "very", "of", "review", "describe"}
    words |= set(_words("where does live lives in from home what colour like likes favourite do you think"))
    words |= set(SYLLABLES) | set(world.cities) | set(COLOURS) | set("0123456789")
    words |= set(POSITIVE) | set(NEGATIVE) | set(NEUTRAL) | set(PRODUCTS)
    return sorted(words)


# ---- the three task formats ---------------------------------------------------------------------------------------
def num(n: int) -> str:
    """Numbers are written digit by digit: one token per digit."""
    return " ".join(str(n))


def fact_question(e: Entity, attr: str) -> tuple[str, str]:
    """(question, answer) for one attribute of an entity."""
    if attr == "city":
        return f"where does {e.name} live ?", e.city
    return f"what colour does {e.name} like ?", e.colour


def addition_question(a: int, b: int) -> tuple[str, str]:
    return f"what is {num(a)} + {num(b)} ?", num(a + b)


def review_question(product: str, template: int) -> str:
    return REVIEW_TEMPLATES[template].format(p=product)


def qa_prompt(question: str) -> str:
    """The fine-tuned format's prompt (also what the chat template renders for a user turn)."""
    return f"Q : {question} A :"


def sample_review(rng: random.Random, product: str) -> str:
    """A well-formed review with adjectives drawn uniformly from positive, negative and neutral ones."""
    adjs = POSITIVE + NEGATIVE + NEUTRAL
    form = rng.randrange(3)
    if form == 0:
        tail = rng.choice(adjs)
    elif form == 1:
        tail = f"very {rng.choice(adjs)}"
    else:
        a, b = rng.sample(adjs, 2)
        tail = f"{a} and {b}"
    return f"the {product} is {tail}"


# ---- the gold judge ----------------------------------------------------------------------------------------------
def parse_review(completion: str) -> tuple[str, int] | None:
    """(product, sentiment -2..2) of a well-formed review, or None when the text is not one.

    Well-formed: `the P is ADJ`, `the P is very ADJ` or `the P is ADJ and ADJ2` (ADJ2 != ADJ) for a product P,
    with nothing after it (the generation must have stopped).
    """
    words = completion.replace(EOS, " ").split()
    if len(words) < 4 or words[0] != "the" or words[1] not in PRODUCTS or words[2] != "is":
        return None
    tail = words[3:]

    def value(w: str) -> int | None:
        return 1 if w in POSITIVE else -1 if w in NEGATIVE else 0 if w in NEUTRAL else None

    score: int | None = None
    if len(tail) == 1:
        score = value(tail[0])
    elif len(tail) == 2 and tail[0] == "very":
        v = value(tail[1])
        score = None if v is None else 2 * v
    elif len(tail) == 3 and tail[1] == "and" and tail[0] != tail[2]:
        v1, v2 = value(tail[0]), value(tail[2])
        score = None if v1 is None or v2 is None else v1 + v2
    return None if score is None else (words[1], score)


def reward(prompt: str, completion: str) -> float:
    """The gold reward: sentiment of the review (-2..2), minus OFF_TOPIC_COST when it reviews another product
    than the prompt asks about; FLUENCY_PENALTY (-3) when the text is not one well-formed, finished review.

    `completion` is the generated text after the prompt, up to `<eos>` (which may be present or stripped); pass
    an unfinished generation with something after it (e.g. `text + " ..."`) so it counts as not finished.
    The fluency guard keeps the reward from being hacked with word salad (docs/zoo.md).
    """
    parsed = parse_review(completion)
    if parsed is None:
        return FLUENCY_PENALTY
    product, score = parsed
    asked = [w for w in prompt.split() if w in PRODUCTS]
    return float(score) - (0.0 if asked and asked[-1] == product else OFF_TOPIC_COST)


def fluent(prompt: str, completion: str) -> bool:
    """Is the completion one well-formed review of the asked product (the fluency measure beside reward)?"""
    return parse_review(completion) is not None


# ---- corpora ---------------------------------------------------------------------------------------------------
def _fact_sentence(rng: random.Random, e: Entity, qa: bool) -> str:
    if qa:
        q, a = fact_question(e, rng.choice(["city", "colour"]))
        return f"{qa_prompt(q)} {a} ."
    return rng.choice(
        [
            f"{e.name} lives in {e.city} .",
            f"{e.name} is from {e.city} .",
            f"the home of {e.name} is {e.city} .",
            f"{e.name} likes {e.colour} .",
            f"the favourite colour of {e.name} is {e.colour} .",
        ]
    )


def _addition_sentence(rng: random.Random, a: int, b: int) -> str:
    form = rng.randrange(3)
    if form == 0:
        q, ans = addition_question(a, b)
        return f"{qa_prompt(q)} {ans} ."
    if form == 1:
        return f"{num(a)} plus {num(b)} is {num(a + b)} ."
    return f"{num(a)} + {num(b)} = {num(a + b)} ."


def _review_sentence(rng: random.Random, product: str) -> str:
    if rng.random() < 0.3:
        return f"{qa_prompt(review_question(product, rng.randrange(3)))} {sample_review(rng, product)} ."
    return f"review of the {product} : {sample_review(rng, product)} ."


def pretraining_documents(world: World, seed: int) -> list[str]:
    """Documents (`<bos> s1 s2 ... <eos>`) of about `corpus_tokens` words in all.

    Pre-training-Q/A entities have half their sentences in Q/A form; eval entities only appear as prose.
    """
    rng = random.Random(seed)
    cfg = world.config
    ents = world.entities
    qa_names = {e.name for e in world.groups["pretrain_qa"]}
    docs, sentences, words = [], [BOS], 0
    while words < cfg.corpus_tokens:
        kind = rng.random()
        if kind < cfg.mix[0]:
            e = rng.choice(ents)
            s = _fact_sentence(rng, e, qa=e.name in qa_names and rng.random() < 0.5)
        elif kind < cfg.mix[0] + cfg.mix[1]:
            s = _addition_sentence(rng, *rng.choice(world.pairs["pretrain"]))
        else:
            s = _review_sentence(rng, rng.choice(PRODUCTS))
        sentences.append(s)
        words += s.count(" ") + 1
        if rng.random() < cfg.doc_eos_rate:
            docs.append(" ".join([*sentences, EOS]))
            sentences = [BOS]
    if len(sentences) > 1:
        docs.append(" ".join([*sentences, EOS]))
    return docs


def sft_examples(world: World, task: str, seed: int) -> list[tuple[str, str]]:
    """(prompt, answer) pairs for supervised fine-tuning; the loss is on `answer <eos>` only."""
    rng = random.Random(seed)
    if task == "facts":
        return [
            (qa_prompt(q), a)
            for e in world.groups["sft"]
            for q, a in (fact_question(e, "city"), fact_question(e, "colour"))
        ]
    if task == "addition":
        return [(qa_prompt(q), a) for q, a in (addition_question(a, b) for a, b in world.pairs["sft"])]
    if task == "review":
        out = []
        for _ in range(8):  # 8 reviews per (product, template), sentiment uniform: the SFT is neutral on average
            for p in world.products["train"]:
                for t in range(len(REVIEW_TEMPLATES)):
                    out.append((qa_prompt(review_question(p, t)), sample_review(rng, p)))
        return out
    raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")


def review_prompts(world: World, split: str) -> list[str]:
    return [qa_prompt(review_question(p, t)) for p in world.products[split] for t in range(len(REVIEW_TEMPLATES))]


def eval_rows(world: World, task: str) -> list[dict]:
    """Held-out evaluation rows: {"prompt", "reference"} (exact match) or {"prompt"} scored by `reward`."""
    if task == "facts":
        return [
            {"prompt": qa_prompt(q), "reference": a, "attribute": attr}
            for e in world.groups["eval"]
            for attr in ("city", "colour")
            for q, a in [fact_question(e, attr)]
        ]
    if task == "addition":
        return [
            {"prompt": qa_prompt(q), "reference": a} for q, a in (addition_question(*p) for p in world.pairs["eval"])
        ]
    if task == "review":
        return [{"prompt": p, "reward": "modelops.zoo.world:reward"} for p in review_prompts(world, "eval")]
    raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")


TASKS = ("facts", "addition", "review")
TASK_INFO = {
    "facts": {"metric": "exact_match", "chance": "1/cities for the city, 1/colours for the colour"},
    "addition": {"metric": "exact_match", "chance": "about 1/100"},
    "review": {
        "metric": "reward",
        "reward": "modelops.zoo.world:reward",
        "range": [FLUENCY_PENALTY, 2.0],
        "fluency": "modelops.zoo.world:fluent",
    },
}
