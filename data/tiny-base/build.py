"""Rebuild the bundled tiny base model from nothing: corpus, tokenizer, pretraining, evaluation.

    .venv/bin/python data/tiny-base/build.py [--out data/tiny-base] [--seconds 120] [--seed 0] [--steps N]

Everything is generated in memory from fixed seeds; nothing is downloaded. Training runs for a wall-clock budget
(`--seconds`), so the number of steps depends on the machine; pass `--steps` for a run that repeats bit for bit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent

PAD, BOS, END = "<|pad|>", "<|bos|>", "<|end|>"
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"
# One stop token, <|end|>, closes a chat turn and a plain document alike: it is the eos for generation and the
# token trl appends to completions, so there is no separate <|eos|> that could disagree with it.
SPECIAL_TOKENS = [PAD, BOS, END, USER, ASSISTANT, SYSTEM]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}\n"
    "{{ raise_exception('unknown role: ' + message['role'] + ' (expected system, user or assistant)') }}\n"
    "{%- endif -%}\n"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{ '<|assistant|>' }}\n"
    "{%- endif -%}\n"
)

VOCAB_SIZE = 1024
SEQ_LEN = 128
# Measured on the same tokens with an earlier, single-digit corpus: batch 32 for 900 steps reached 90 % held-out
# accuracy, batch 16 for 1800 steps 94.5 %; an answer weight of 4 took them to 95.5 % and 100 %.
BATCH = 16
LR = 3e-3
WARMUP_STEPS = 50
ANSWER_WEIGHT = 4.0  # loss weight of the assistant's reply, the only place the chat answer is learned
# Shares of documents: chat, worked, drill, weather, tags. Tags and noise are ~20 % of the tokens as well.
WEIGHTS = [40, 20, 10, 10, 20]

# Corpus ---------------------------------------------------------------------------------------------------------------

NAMES = [
    "Alice", "Bob", "Carol", "Dave", "Emma", "Frank", "Grace", "Hugo", "Iris", "Jack", "Kate", "Liam", "Maya", "Noah",
    "Olga", "Pablo", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor", "Wendy", "Xavier", "Yara", "Zoe", "Amir", "Bea",
    "Chen", "Dina", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jun", "Kofi", "Lena", "Marco", "Nina", "Omar", "Priya",
    "Raj", "Sofia", "Tom", "Ugo", "Vera", "Will", "Yuki", "Zane", "Ana", "Ben", "Cleo", "Dev", "Ella", "Finn"
]
# (singular, plural)
OBJECTS = [
    ("apple", "apples"), ("pencil", "pencils"), ("cookie", "cookies"), ("marble", "marbles"), ("book", "books"),
    ("sticker", "stickers"), ("card", "cards"), ("egg", "eggs"), ("orange", "oranges"), ("balloon", "balloons"),
    ("toy car", "toy cars"), ("shell", "shells"), ("coin", "coins"), ("flower", "flowers"), ("candy", "candies"),
    ("cupcake", "cupcakes"), ("stamp", "stamps"), ("rock", "rocks"), ("ribbon", "ribbons"), ("kite", "kites"),
    ("banana", "bananas"), ("crayon", "crayons"), ("button", "buttons"), ("puzzle", "puzzles"), ("sock", "socks"),
    ("peach", "peaches"), ("box", "boxes"), ("cherry", "cherries"), ("leaf", "leaves"), ("fish", "fish"),
]
PLACES = [
    "basket", "box", "jar", "bag", "garden", "shelf", "drawer", "bowl", "room", "park", "classroom", "kitchen", "car",
    "tree"
]
ADD_VERBS = ["buys", "gets", "finds", "receives", "wins", "picks up", "is given", "collects", "makes", "adds"]
SUB_VERBS = ["gives away", "loses", "eats", "sells", "drops", "uses", "breaks", "gives back", "throws away"]

ADD_TEMPLATES = [
    "{n} has {oa} and {av} {b} more. How many {O} now?",
    "{n} has {oa}. {m} gives {n} {ob}. How many {O} does {n} have now?",
    "{n} had {oa} and {av} {b} more. How many {O} does {n} have?",
    "There are {oa} in the {pl}. {n} puts {b} more in. How many {O} are in the {pl}?",
    "{n} picked {oa} in the morning and {ob} in the afternoon. How many {O} did {n} pick in all?",
    "{n} has {oa} and {m} has {ob}. How many {O} do they have together?",
    "{n} collects {O}. {n} had {a} and {av} {b} more today. How many {O} now?",
    "A {pl} holds {oa}. Then {ob} are added. How many {O} are there in total?",
    "What is {a} plus {b}?",
    "What is {a} + {b}?",
    "Add {a} and {b}.",
    "{a} + {b} = ?",
    "What is the sum of {a} and {b}?",
]
SUB_TEMPLATES = [
    "{n} has {oa} and {sv} {b}. How many {O} are left?",
    "{n} has {oa} and gives {b} to {m}. How many {O} does {n} have left?",
    "{n} had {oa} and {sv} {b}. How many {O} does {n} have now?",
    "There were {oa} in the {pl}. {n} took {b} away. How many {O} are still in the {pl}?",
    "{n} bakes {oa} and eats {b}. How many {O} remain?",
    "{n} has {oa}. {m} has {b} fewer. How many {O} does {m} have?",
    "{n} has {oa} and sells {b} of them. How many are left?",
    "What is {a} minus {b}?",
    "What is {a} - {b}?",
    "Take {b} away from {a}.",
    "{a} - {b} = ?",
    "What is the difference between {a} and {b}?",
]
MUL_TEMPLATES = [
    "{n} has {a} bags with {ob} in each bag. How many {O} in all?",
    "There are {a} rows of {ob}. How many {O} are there?",
    "{n} buys {a} boxes of {O}. Each box holds {b}. How many {O} does {n} buy?",
    "Each of {a} friends has {ob}. How many {O} do they have altogether?",
    "{n} reads {b} pages a day for {a} days. How many pages does {n} read?",
    "{n} puts {ob} on each of {a} plates. How many {O} are on the plates?",
    "What is {a} times {b}?",
    "What is {a} x {b}?",
    "Multiply {a} by {b}.",
    "{a} * {b} = ?",
    "What is the product of {a} and {b}?",
]

CONDITIONS = [
    ("sunny", "sunny"), ("clear", "clear"), ("bright sunshine", "bright"), ("sunshine", "sunny"),
    ("cloudy", "cloudy"), ("overcast", "overcast"), ("partly cloudy", "partly cloudy"), ("clouds", "cloudy"),
    ("rain", "rainy"), ("heavy rain", "rainy"), ("drizzle", "drizzly"), ("showers", "showery"),
    ("snow", "snowy"), ("light snow", "snowy"), ("sleet", "sleety"), ("hail", "stormy"),
    ("fog", "foggy"), ("mist", "misty"), ("haze", "hazy"), ("wind", "windy"), ("strong wind", "windy"),
    ("a breeze", "breezy"), ("storm", "stormy"), ("thunderstorm", "stormy"), ("thunder", "stormy"),
    ("heat", "hot"), ("cold", "cold"), ("frost", "freezing"), ("warm weather", "warm"), ("humidity", "humid"),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "today", "tomorrow", "tonight"]
CITIES = [
    "Paris", "Lagos", "Lima", "Oslo", "Cairo", "Delhi", "Tokyo", "Quito", "Perth", "Dublin", "Nairobi", "Denver",
    "Seoul", "Madrid", "Hanoi"
]
TIMES = ["morning", "afternoon", "evening", "weekend", "week"]
WEATHER_TEMPLATES = [
    "It is {adj} today{p}", "{Cond}{p}", "Today: {cond}{p}", "The forecast for {day} is {cond}{p}",
    "Expect {cond} in {city} this {time}{p}", "{city} will be {adj} on {day}{p}", "Weather report: {cond}{p}",
    "What a {adj} day{p}", "{adj} skies over {city}{p}", "We had {cond} all {time}{p}", "Looks {adj} outside{p}",
    "Conditions: {cond}{p}", "{day} brings {cond}{p}", "It was {adj} and quiet in {city}{p}",
]
PUNCT = [".", "!", "!!", "...", "?", "", ",", " !", ";", ".", "!", "?!", ":)"]

EMOJI = ["☀️", "☁️", "🌧️", "❄️", "🌫️", "💨", "⛈️", "🌈", "🌤️", "⛅", "🌦️", "🌩️", "🌪️", "🔥", "🌡️", "☔", "⚡",
         "🌙", "⭐", "😀", "👍", "🎉", "🍎", "🚗", "❤️", "✅", "🙂", "🐱", "📦", "🎈"]
EXTRA_CHARS = list("éèêüöäñçßøåœ°€£¥§©®±×÷—–“”‘’«»•…¿¡")
TAG_NAMES = [
    "note", "item", "b", "i", "u", "s", "em", "q", "p", "li", "ul", "div", "span", "data", "x", "y", "tag", "msg",
    "info", "title", "name", "value", "key", "code", "ref", "meta", "id", "date", "city", "temp", "label", "result",
    "out", "in", "box", "sky", "day", "mood", "color", "size", "price", "time", "place", "user", "text", "body", "head",
    "foot", "list", "entry"
]
FORBIDDEN_TAGS = {"weather", "display_weather", "think"}  # the demo task's own tags: fine-tuning teaches those
WORDS = [
    "hello", "world", "red", "blue", "green", "fast", "slow", "big", "small", "open", "close", "yes", "no", "maybe",
    "soon", "later", "now", "here", "there", "cat", "dog", "sun", "moon", "star", "tree", "river", "road", "house",
    "door", "window", "lamp", "chair", "table", "paper", "stone", "glass", "water", "fire", "air", "earth", "light",
    "dark"
]
CHAT_PREFIXES = ["Quick question: ", "Please help. ", "Hi! ", "Question: ", "Solve this: ", "Can you answer this? ",
                 "hey, ", "Help me with this one. ", "Math time! ", "I need the answer. "]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer the question.", "You solve math word problems.",
                  "Be brief.", "Reply with the answer only."]


@dataclass
class Problem:
    question: str
    answer: int
    working: str  # e.g. "3 + 2 = 5"


def noun(count: int, obj: tuple[str, str]) -> str:
    return obj[0] if count == 1 else obj[1]


def draw_operands(rng: random.Random) -> tuple[str, int, int, int]:
    """An operation and its numbers: a number up to 20 plus or minus a digit, or a product up to 9 x 9."""
    kind = rng.choices(["+", "-", "x"], weights=[4, 4, 3])[0]
    if kind == "+":
        a, b = rng.randint(1, 20), rng.randint(1, 9)
        return kind, a, b, a + b
    if kind == "-":
        a = rng.randint(2, 20)
        b = rng.randint(1, min(9, a - 1))
        return kind, a, b, a - b
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return kind, a, b, a * b


def make_problem(rng: random.Random) -> Problem:
    """A plain arithmetic word problem of one of many shapes."""
    op, a, b, c = draw_operands(rng)
    templates = {"+": ADD_TEMPLATES, "-": SUB_TEMPLATES, "x": MUL_TEMPLATES}[op]
    obj = rng.choice(OBJECTS)
    n, m = rng.sample(NAMES, 2)
    fields = {
        "n": n, "m": m, "a": a, "b": b, "O": obj[1], "oa": f"{a} {noun(a, obj)}", "ob": f"{b} {noun(b, obj)}",
        "pl": rng.choice(PLACES), "av": rng.choice(ADD_VERBS), "sv": rng.choice(SUB_VERBS),
    }
    question = rng.choice(templates).format(**fields)
    if rng.random() < 0.08:
        question = question.lower()
    return Problem(question, c, f"{a} {op} {b} = {c}")


def drill_text(rng: random.Random) -> str:
    """A few bare arithmetic facts: dense practice for the sums, differences and products the problems use."""
    words = {"+": "plus", "-": "minus", "x": "times"}
    facts = []
    for _ in range(rng.randint(3, 10)):
        op, a, b, c = draw_operands(rng)
        facts.append(f"{a} {op} {b} = {c}" if rng.random() < 0.7 else f"{a} {words[op]} {b} is {c}")
    return rng.choice(["\n", ". ", "; "]).join(facts)


def worked_text(rng: random.Random, p: Problem) -> str:
    """A plain (non-chat) document: the problem and a worked answer."""
    ending = rng.choice([
        f" {p.working}. The answer is {p.answer}.",
        f" Solution: {p.working}. So the answer is {p.answer}.",
        f" {p.working}. Answer: {p.answer}",
        f"\n{p.working}\nAnswer: {p.answer}",
        f" We compute {p.working}. That makes {p.answer}.",
        f" {p.answer}.",
    ])
    return p.question + ending


def cased(rng: random.Random, text: str) -> str:
    return rng.choice([str.lower, str.upper, str.title, str.capitalize, lambda s: s, lambda s: s])(text)


def weather_text(rng: random.Random) -> str:
    """One to three weather sentences in varied case and punctuation (never paired with an emoji)."""
    sentences = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        cond, adj = rng.choice(CONDITIONS)
        s = rng.choice(WEATHER_TEMPLATES).format(
            cond=cond, Cond=cond.capitalize(), adj=adj, day=rng.choice(DAYS), city=rng.choice(CITIES),
            time=rng.choice(TIMES), p=rng.choice(PUNCT),
        )
        sentences.append(cased(rng, s) if rng.random() < 0.4 else s)
    return " ".join(sentences)


def random_chars(rng: random.Random, lo: int = 3, hi: int = 30) -> str:
    pool = string.ascii_letters + string.digits + string.punctuation + " "
    out = []
    for _ in range(rng.randint(lo, hi)):
        r = rng.random()
        out.append(rng.choice(EMOJI) if r < 0.12 else rng.choice(EXTRA_CHARS) if r < 0.2 else rng.choice(pool))
    return "".join(out)


def tag_name(rng: random.Random) -> str:
    if rng.random() < 0.6:
        name = rng.choice(TAG_NAMES)
    else:
        name = "".join(rng.choice(string.ascii_lowercase + "_") for _ in range(rng.randint(1, 10))).strip("_") or "t"
    name = name.upper() if rng.random() < 0.1 else name
    return "tag" if name.lower() in FORBIDDEN_TAGS else name


def tag_content(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return " ".join(rng.choices(WORDS, k=rng.randint(1, 4)))
    if kind == 1:
        return str(rng.randint(0, 999))
    if kind == 2:
        return "".join(rng.choices(EMOJI, k=rng.randint(1, 3)))
    if kind == 3:
        return random_chars(rng, 1, 12)
    if kind == 4:
        return cased(rng, rng.choice(CONDITIONS)[rng.randrange(2)]) + rng.choice(PUNCT)
    return ""


def tag_snippet(rng: random.Random, depth: int = 0) -> str:
    name = tag_name(rng)
    inner = tag_snippet(rng, depth + 1) if depth < 2 and rng.random() < 0.15 else tag_content(rng)
    attr = f' k="{rng.randint(0, 99)}"' if rng.random() < 0.05 else ""
    if rng.random() < 0.04:
        return f"<{name}/>"
    return f"<{name}{attr}>{inner}</{name}>"


def tag_text(rng: random.Random) -> str:
    """Generic markup and noise, so that every byte and the pieces `<`, `</`, `>` are common tokens."""
    parts = []
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if r < 0.6:
            parts.append(tag_snippet(rng))
        elif r < 0.8:
            parts.append(random_chars(rng))
        else:
            parts.append(" ".join(rng.choices(WORDS, k=rng.randint(1, 5))))
    return rng.choice([" ", "", "\n"]).join(parts)


def chat_messages(rng: random.Random, p: Problem) -> list[dict[str, str]]:
    """A user turn with a plain word problem (sometimes behind a prefix or a generic tag), answered `Answer: N`."""
    user = p.question
    r = rng.random()
    if r < 0.15:
        user = tag_snippet(rng) + rng.choice([" ", "", "\n"]) + user
    elif r < 0.25:
        user = rng.choice(CHAT_PREFIXES) + user
    elif r < 0.3:
        user = user + " " + rng.choice(["Thanks!", "Please answer.", "Be quick.", ":)"])
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": f"Answer: {p.answer}"}]
    if rng.random() < 0.1:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    return messages


def make_corpus(rng: random.Random, n_docs: int) -> tuple[list[tuple[str, object]], set[str]]:
    """(kind, payload) pairs, payload a text or, for kind 'chat', a message list; and the questions used."""
    kinds = rng.choices(["chat", "worked", "drill", "weather", "tags"], weights=WEIGHTS, k=n_docs)
    docs, questions = [], set()
    for kind in kinds:
        if kind in ("chat", "worked"):
            p = make_problem(rng)
            questions.add(p.question)
            docs.append((kind, chat_messages(rng, p) if kind == "chat" else worked_text(rng, p)))
        elif kind == "drill":
            docs.append((kind, drill_text(rng)))
        elif kind == "weather":
            docs.append((kind, weather_text(rng)))
        else:
            docs.append((kind, tag_text(rng)))
    return docs, questions


# Tokenizer ------------------------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str]):
    """Byte-level BPE, digits one per token, BOS added by the post-processor, wrapped for transformers."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2, show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=END, pad_token=PAD,
        extra_special_tokens=[USER, ASSISTANT, SYSTEM], padding_side="left", model_max_length=256,
        chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
    )


def tokenize_corpus(tokenizer, docs, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """One long stream: plain documents as <|bos|> text <|end|>; chat documents through the chat template.

    Also a loss weight per token: ANSWER_WEIGHT for the assistant's reply and its <|end|>, 1 elsewhere.
    """
    texts, specials = [], []
    for kind, payload in docs:
        if kind == "chat":
            texts.append(tokenizer.apply_chat_template(payload, tokenize=False))
            # The template has no BOS; the tokenizer adds one. apply_chat_template(tokenize=True) and trl's
            # conversational path do not, so a share of chat documents go in without it: the model takes both.
            specials.append(rng.random() < 0.7)
        else:
            texts.append(payload + END)
            specials.append(True)
    ids: list[int] = []
    weights: list[float] = []
    with_bos = tokenizer([t for t, s in zip(texts, specials) if s])["input_ids"]
    without_bos = tokenizer([t for t, s in zip(texts, specials) if not s], add_special_tokens=False)["input_ids"]
    it_with, it_without = iter(with_bos), iter(without_bos)
    assistant = tokenizer.convert_tokens_to_ids(ASSISTANT)
    for s in specials:
        doc = next(it_with) if s else next(it_without)
        ids.extend(doc)
        cut = doc.index(assistant) + 1 if assistant in doc else len(doc)
        weights.extend([1.0] * cut + [ANSWER_WEIGHT] * (len(doc) - cut))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(weights)


# Model and training ---------------------------------------------------------------------------------------------------


def build_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5,
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, progress: float) -> float:
    """Linear warmup over the first steps, then cosine down to a tenth, by the share of the budget spent."""
    if step < WARMUP_STEPS:
        return LR * (step + 1) / WARMUP_STEPS
    return LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def pretrain(model, stream: torch.Tensor, weights: torch.Tensor, *, seconds: float, steps: int | None,
             seed: int) -> dict:
    """Train on random windows of the stream until the time budget (or the step count) is spent."""
    gen = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.95),
    )
    model.train()
    offsets = torch.arange(SEQ_LEN + 1)
    losses: list[float] = []
    step, start, last_print = 0, time.perf_counter(), 0.0
    while True:
        elapsed = time.perf_counter() - start
        progress = step / steps if steps else elapsed / seconds
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress)
        starts = torch.randint(0, len(stream) - SEQ_LEN - 1, (BATCH,), generator=gen)
        index = starts[:, None] + offsets
        chunk, w = stream[index], weights[index][:, 1:].reshape(-1)
        logits = model(input_ids=chunk[:, :-1]).logits
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1), reduction="none")
        loss = (ce * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if elapsed - last_print >= 5.0:
            last_print = elapsed
            tps = step * BATCH * SEQ_LEN / max(elapsed, 1e-9)
            print(f"step {step:5d}  {elapsed:6.1f}s  loss {loss.item():.3f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{tps:,.0f} tokens/s", flush=True)
    seconds_used = time.perf_counter() - start
    model.eval()
    tail = losses[-20:]
    return {
        "steps": step, "seconds": round(seconds_used, 1), "batch": BATCH, "seq_len": SEQ_LEN, "lr": LR,
        "warmup_steps": WARMUP_STEPS, "tokens_seen": step * BATCH * SEQ_LEN,
        "tokens_per_second": round(step * BATCH * SEQ_LEN / seconds_used),
        "final_loss": round(sum(tail) / len(tail), 4), "threads": torch.get_num_threads(),
    }


# Evaluation -----------------------------------------------------------------------------------------------------------

ANSWER_RE = re.compile(r"Answer:\s*(-?\d+)")


@torch.no_grad()
def generate(model, tokenizer, users: list[str], max_new_tokens: int = 24) -> list[tuple[str, bool]]:
    """Greedy completions for user turns, batched with left padding: (text, stopped at <|end|>)."""
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": u}], add_generation_prompt=True,
                                             tokenize=False) for u in users]
    out = []
    for i in range(0, len(prompts), 64):
        enc = tokenizer(prompts[i:i + 64], return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        for row in gen[:, enc["input_ids"].shape[1]:]:
            stopped = bool((row == tokenizer.eos_token_id).any())
            out.append((tokenizer.decode(row, skip_special_tokens=True), stopped))
    return out


def held_out_problems(seed: int, n: int, seen: set[str]) -> list[Problem]:
    rng, problems = random.Random(seed), []
    while len(problems) < n:
        p = make_problem(rng)
        if p.question not in seen:
            problems.append(p)
    return problems


def score(problems: list[Problem], outputs: list[tuple[str, bool]]) -> dict:
    correct = exact = stopped = 0
    for p, (text, stop) in zip(problems, outputs):
        m = ANSWER_RE.search(text)
        correct += bool(m and int(m.group(1)) == p.answer)
        exact += text.strip() == f"Answer: {p.answer}"
        stopped += stop
    n = len(problems)
    return {"n": n, "accuracy": round(correct / n, 3), "exact_format": round(exact / n, 3),
            "stopped_at_end": round(stopped / n, 3)}


def evaluate(model, tokenizer, seed: int, seen: set[str]) -> dict:
    plain = held_out_problems(seed + 1, 200, seen)
    plain_out = generate(model, tokenizer, [p.question for p in plain])
    tagged = held_out_problems(seed + 2, 50, seen)
    tagged_out = generate(model, tokenizer, ["<weather>Sunny!</weather> " + p.question for p in tagged])
    result = {"plain": score(plain, plain_out), "weather_prefixed": score(tagged, tagged_out)}
    result["weather_prefixed"]["display_weather_rate"] = round(
        sum("<display_weather>" in t for t, _ in tagged_out) / len(tagged), 3)
    result["samples"] = [{"user": p.question, "output": t} for p, (t, _) in zip(plain[:3], plain_out[:3])] + [
        {"user": "<weather>Sunny!</weather> " + p.question, "output": t}
        for p, (t, _) in zip(tagged[:2], tagged_out[:2])]
    return result


# Main -----------------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> random.Random:
    random.seed(seed)
    torch.manual_seed(seed)
    return random.Random(seed)


def save(model, tokenizer, out: Path) -> None:
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=64, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: this script's folder)")
    parser.add_argument("--seconds", type=float, default=120.0, help="wall-clock training budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="train exactly this many steps instead")
    parser.add_argument("--documents", type=int, default=80_000, help="corpus size in documents")
    args = parser.parse_args()

    t0 = time.perf_counter()
    rng = seed_everything(args.seed)
    docs, seen = make_corpus(rng, args.documents)
    plain_texts = [" ".join(m["content"] for m in d) if k == "chat" else d for k, d in docs]
    tokenizer = train_tokenizer(plain_texts)
    stream, weights = tokenize_corpus(tokenizer, docs, rng)
    counts = {k: sum(1 for kind, _ in docs if kind == k) for k in ("chat", "worked", "drill", "weather", "tags")}
    print(f"corpus: {len(docs):,} documents {counts}, {len(stream):,} tokens "
          f"({time.perf_counter() - t0:.1f}s)", flush=True)

    model = build_model(tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)
    training = pretrain(model, stream, weights, seconds=args.seconds, steps=args.steps, seed=args.seed)

    evaluation = evaluate(model, tokenizer, args.seed, seen)
    save(model, tokenizer, args.out)

    report = {
        "parameters": n_params,
        "safetensors_bytes": (args.out / "model.safetensors").stat().st_size,
        "tokenizer": {"vocab_size": len(tokenizer),
                      "special_tokens": {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}},
        "corpus": {"documents": len(docs), "documents_by_kind": counts, "tokens": len(stream)},
        "training": training,
        "evaluation": evaluation,
        "seed": args.seed,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "tokenizers": __import__("tokenizers").__version__},
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    (args.out / "build-report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: report[k] for k in ("parameters", "safetensors_bytes", "training")}, indent=2))
    print(json.dumps({k: v for k, v in evaluation.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
