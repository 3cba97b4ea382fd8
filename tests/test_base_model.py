"""The bundled tiny base model in data/tiny-base: its tokenizer, chat format, answers and stopping."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import re
from pathlib import Path

import pytest

BASE = Path(__file__).resolve().parents[1] / "data" / "tiny-base"

# Plain word problems in the base model's range (a number up to 20 plus or minus a digit, products up to 9 x 9),
# with names, objects and phrasings of the pretraining corpus but not copied from it.
PROBLEMS = [
    ("Alice has 3 apples and buys 2 more. How many apples now?", 5),
    ("Bob has 7 marbles and loses 4. How many marbles are left?", 3),
    ("Carol has 6 bags with 4 cookies in each bag. How many cookies in all?", 24),
    ("What is 8 plus 5?", 13),
    ("What is 9 times 7?", 63),
    ("What is 14 minus 6?", 8),
    ("Dave had 9 stickers and finds 9 more. How many stickers does Dave have?", 18),
    ("There are 12 eggs in the basket. Emma took 5 away. How many eggs are still in the basket?", 7),
    ("Frank buys 3 boxes of pencils. Each box holds 8. How many pencils does Frank buy?", 24),
    ("Grace has 4 books and Hugo has 6 books. How many books do they have together?", 10),
    ("Iris bakes 18 cupcakes and eats 3. How many cupcakes remain?", 15),
    ("There are 5 rows of 5 flowers. How many flowers are there?", 25),
    ("Jack has 2 coins. Kate gives Jack 7 coins. How many coins does Jack have now?", 9),
    ("Liam has 13 shells and sells 8 of them. How many are left?", 5),
    ("Each of 6 friends has 3 kites. How many kites do they have altogether?", 18),
    ("Maya picked 4 oranges in the morning and 8 oranges in the afternoon. How many oranges did Maya pick in all?",
     12),
    ("Noah has 10 balloons and gives 3 to Olga. How many balloons does Noah have left?", 7),
    ("Multiply 7 by 8.", 56),
    ("Add 16 and 7.", 23),
    ("Rosa reads 4 pages a day for 9 days. How many pages does Rosa read?", 36),
]


@pytest.fixture(scope="module")
def base():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    model = AutoModelForCausalLM.from_pretrained(BASE).eval()
    return model, tokenizer


def prompt(tokenizer, user: str) -> str:
    messages = [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.fixture(scope="module")
def answers(base):
    """Greedy completions of PROBLEMS in one left-padded batch: (decoded text, new token ids)."""
    import torch

    model, tokenizer = base
    enc = tokenizer([prompt(tokenizer, q) for q, _ in PROBLEMS], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    new = out[:, enc["input_ids"].shape[1]:]
    return [(tokenizer.decode(row, skip_special_tokens=True), row.tolist()) for row in new]


def test_tokenizer_splits_digits_and_adds_bos(base):
    _, tokenizer = base
    ids = tokenizer("Alice has 1234 apples")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [t for t in tokens if any(c.isdigit() for c in t)] == ["1", "2", "3", "4"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Alice has 1234 apples"


def test_tokenizer_pads_on_the_left(base):
    _, tokenizer = base
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.padding_side == "left"
    batch = tokenizer(["hi", "a much longer line of text"], padding=True)
    short, long = batch["input_ids"]
    assert len(short) == len(long)
    assert short[0] == tokenizer.pad_token_id and short[-1] != tokenizer.pad_token_id
    assert batch["attention_mask"][0][0] == 0


def test_chat_template_ends_generation_prompt_with_assistant_token(base):
    _, tokenizer = base
    text = prompt(tokenizer, "What is 2 plus 2?")
    assert text == "<|user|>What is 2 plus 2?<|end|><|assistant|>"
    ids = tokenizer(text)["input_ids"]
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    # The completion starts right after a special token, so the prompt/completion boundary is a token boundary.
    full = tokenizer(text + "Answer: 4<|end|>")["input_ids"]
    assert full[: len(ids)] == ids
    assert full[-1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|end|>")


def test_generation_config_stops_at_end_token(base):
    model, tokenizer = base
    eos = model.generation_config.eos_token_id
    assert tokenizer.eos_token_id in (eos if isinstance(eos, list) else [eos])
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.do_sample is False


def test_answers_plain_word_problems(answers):
    correct = [text.strip() == f"Answer: {n}" for (text, _), (_, n) in zip(answers, PROBLEMS)]
    wrong = [(q, text) for ok, (text, _), (q, _) in zip(correct, answers, PROBLEMS) if not ok]
    assert sum(correct) / len(PROBLEMS) >= 0.8, wrong


def test_generation_stops_at_end_token(answers, base):
    _, tokenizer = base
    stopped = [tokenizer.eos_token_id in ids for _, ids in answers]
    assert sum(stopped) / len(answers) >= 0.9
    assert all(re.fullmatch(r"Answer: \d+", text.strip()) for (text, _), ok in zip(answers, stopped) if ok)
