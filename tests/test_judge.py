"""Judge checks (issue 27, first part): a rubric rendered with the input, the output and the expected output, a real
local judge model answering greedily in batches, verdicts parsed (an unreadable answer fails as "judge: no
verdict"), cached in the store, and their failures in a round like any rule's. The judge here is the bundled tiny
model: a word-problem model, which never writes PASS or FAIL itself (the no-verdict path), so a local judge reads its
verdict from the likelihood of each allowed answer by default, and writes the reason after it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, write

from refinery.config import InferSettings
from refinery.device import load_tokenizer
from refinery.errors import ConfigError, RefineryError
from refinery.prompts import CUT_MARK, cut_input, prompt_lengths
from refinery.rules import load_rules
from refinery.stages import infer
from refinery.stages.judge import (
    ASK,
    ASK_PICK,
    ASK_SCORE,
    NO_VERDICT,
    answer_choices,
    judge_checks,
    judge_name,
    parse_score,
    parse_verdict,
    render_rubric,
)
from refinery.store import Store

RUBRIC = ('[[check]]\nname = "polite"\ntype = "judge"\nwhen = "weather"\nseverity = 2\n'
          'rubric = "Is this reply to {{ input }} polite? Reply: {{ output }} (a good reply: {{ expected }})"\n')


@pytest.mark.parametrize(("answer", "passed", "reason"), [
    ("PASS: the reply is polite.", True, "the reply is polite."),
    ("**FAIL** - it shouts at the user\nmore text", False, "it shouts at the user more text"),
    ("fail.", False, ""),
    ("  pass", True, ""),
    ("The answer is: FAIL.", False, ""),
    ("Verdict: pass, because it thanks the user", True, "because it thanks the user"),
    ("I think it passes", None, ""),
    ("PASSWORD: 1234", None, ""),
    ("PASS or FAIL? Hard to say", None, ""),
    ("It is fine.\nPASS", None, ""),
    ("", None, ""),
    ("FAIL (p=0.93)\nThe emoji is wrong.", False, "The emoji is wrong."),
])
def test_verdicts_are_read_from_the_first_word(answer: str, passed: bool | None, reason: str) -> None:
    verdict = parse_verdict(answer)
    assert (verdict.passed, verdict.reason, verdict.answer) == (passed, reason, answer)


@pytest.mark.parametrize(("answer", "passed", "reason"), [
    ("4", True, "score 4/5"),
    ("Score: 4/5 because it thanks the user", True, "score 4/5: because it thanks the user"),
    ("**3** - curt", False, "score 3/5: curt"),
    ("2.5", None, ""),
    ("Score: 7", None, ""),
    ("no idea", None, ""),
])
def test_scores_are_read_from_the_first_line_and_pass_at_the_threshold(answer: str, passed: bool | None,
                                                                      reason: str) -> None:
    verdict = parse_score(answer, scale=5, threshold=4)
    assert (verdict.passed, verdict.reason) == (passed, reason)


def test_a_scored_judge_check_asks_for_a_score_and_fails_below_the_threshold(demo_project) -> None:
    write(demo_project.rules_dir / "judge.toml", RUBRIC.replace("severity = 2\n", "severity = 2\nscale = 5\n"
                                                                "threshold = 4\n"))
    rules = load_rules(demo_project.rules_dir)
    asked: list[str] = []

    def answer(prompts: list[str]) -> list[str]:
        asked.extend(prompts)
        return ["Score: 5/5, kind." if "Reply: Answer: 5" in p else "2: it is wrong" for p in prompts]

    results = judge_checks(rules, _rows(), project=demo_project, answer=answer)
    assert results.select("example_id", "passed", "detail").rows() == [
        ("a", True, "score 5/5: kind."), ("b", False, "score 2/5: it is wrong")]
    assert all(p.endswith("Answer with a score from 1 to 5 on the first line (4 or more passes), then one sentence "
                          "that says why.") for p in asked)


def test_a_judge_check_needs_a_rubric_that_is_jinja(tmp_path: Path) -> None:
    write(tmp_path / "rules" / "j.toml", RUBRIC)
    (check,) = load_rules(tmp_path / "rules").checks
    assert (check.type, check.severity, check.when) == ("judge", 2.0, "weather")
    row = {"input": "hi", "prediction": "go away", "expected": "hello", "fields": None}
    assert render_rubric(check, row) == ("Is this reply to hi polite? Reply: go away (a good reply: hello)\n\n"
                                         "Answer with PASS or FAIL on the first line, then one sentence that says "
                                         "why.")
    cases = {
        '[[check]]\nname = "j"\ntype = "judge"\n': "rules/j.toml:1: check 'j': a judge check needs 'rubric'.",
        '[[check]]\nname = "j"\ntype = "judge"\nrubric = "{{ input "\n':
            "rules/j.toml:4: check 'j': rubric: not a Jinja template: unexpected end of template, expected 'end of "
            "print statement'. (line 1 of the rubric).",
        '[[check]]\nname = "j"\ntype = "regex"\npattern = "x"\nrubric = "hi"\n':
            "rules/j.toml:5: check 'j': rubric: a rubric is the prompt of a judge check. Remove it, or make it type "
            "= \"judge\".",
        '[[check]]\nname = "j"\ntype = "judge"\nrubric = "x"\nscale = 5\nthreshold = 6\n':
            "rules/j.toml:6: check 'j': threshold = 6: expected the lowest passing score, from 1 to 5.",
        '[[check]]\nname = "j"\ntype = "judge"\nrubric = "x"\nscale = 50\nthreshold = 4\n':
            "rules/j.toml:5: check 'j': scale = 50: expected a whole number from 2 to 10 (the judge scores 1 to "
            "scale), with threshold.",
    }
    for text, message in cases.items():
        write(tmp_path / "rules" / "j.toml", text)
        with pytest.raises(ConfigError) as caught:
            load_rules(tmp_path / "rules")
        assert str(caught.value).replace(str(tmp_path) + "/", "") == message


def _rows() -> pl.DataFrame:
    inputs = ["<weather>Sunny</weather> 2 + 3?", "<weather>Rain</weather> 4 + 1?", "1 + 1?"]
    return pl.DataFrame({"example_id": ["a", "b", "c"], "variant": ["", "", ""], "input": inputs,
                         "expected": ["Answer: 5", "Answer: 5", "Answer: 2"], "fields": [None, None, None],
                         "prediction": ["Answer: 5", "Answer: 4", "Answer: 2"]})


def test_the_local_judge_answers_each_applicable_output_once_and_the_store_remembers(demo_project) -> None:
    write(demo_project.rules_dir / "judge.toml", RUBRIC)
    rules = load_rules(demo_project.rules_dir)
    first = judge_checks(rules, _rows(), project=demo_project)  # the bundled model, really generating
    assert first["example_id"].to_list() == ["a", "b"]  # "1 + 1?" has no weather: the check does not apply
    assert first.select("check_name", "applies", "severity").unique().rows() == [("polite", True, 2.0)]
    for passed, detail in first.select("passed", "detail").rows():  # a verdict with its reason, or none: failed
        read = not detail.startswith(f"{NO_VERDICT}: ")
        assert passed in (True, False) and (read or passed is False)
    with Store(demo_project.store_path) as store:
        assert store.scalar("SELECT count(*) FROM judge_verdicts") == 2

    def nobody(prompts: list[str]) -> list[str]:
        raise AssertionError(f"the judge was asked again: {prompts}")

    again = judge_checks(rules, _rows(), project=demo_project, answer=nobody)
    assert again.equals(first)


def test_an_unreadable_answer_fails_the_check_as_no_verdict(demo_project) -> None:
    write(demo_project.rules_dir / "judge.toml", RUBRIC)
    rules = load_rules(demo_project.rules_dir)
    def answer(prompts: list[str]) -> list[str]:  # a judge that reads one reply and babbles on the other
        return ["PASS: polite enough." if "Reply: Answer: 5" in p else "Sunny! 5 apples" for p in prompts]

    results = judge_checks(rules, _rows(), project=demo_project, answer=answer)
    assert results.select("example_id", "passed", "detail").rows() == [
        ("a", True, "polite enough."), ("b", False, f"{NO_VERDICT}: 'Sunny! 5 apples'")]


def test_a_rubric_naming_what_it_cannot_see_names_the_check(demo_project) -> None:
    write(demo_project.rules_dir / "judge.toml", RUBRIC.replace("{{ expected }}", "{{ reference }}"))
    with pytest.raises(RefineryError) as caught:
        judge_checks(load_rules(demo_project.rules_dir), _rows(), project=demo_project, answer=lambda p: [])
    assert str(caught.value).endswith("check 'polite': rubric: 'reference' is undefined (it sees input, output, "
                                      "expected and fields).")


def test_a_judge_prompt_over_the_context_loses_its_middle_and_keeps_its_question() -> None:
    """The bundled model has 256 positions: a long output under judgement is cut out of the middle of the prompt,
    so that the prompt still ends with the verdict it asks for (cut at its end, the question would be lost)."""
    model = str(REPO / "data" / "tiny-base")
    tokenizer = load_tokenizer(model)
    text = "Is this reply polite? Reply: " + "very long words " * 400 + "the end." + ASK
    cut = cut_input(tokenizer, text, max_tokens=200, middle=True)
    assert cut.startswith("Is this reply polite? Reply: very long words") and CUT_MARK in cut
    assert cut.endswith("then one sentence that says why.") and prompt_lengths(tokenizer, [cut])[0] <= 200
    asked = infer.generate([text], base_model=model, settings=InferSettings(max_new_tokens=8), cut_middle=True)
    prompt = asked["prompt"][0]  # the chat template's assistant opening follows the question
    assert "then one sentence that says why." in prompt[-80:] and CUT_MARK in prompt


def test_choose_scores_each_answer_as_a_forward_pass_does_whatever_the_batch() -> None:
    """The log-probability of each choice as the answer's first tokens: the same one prompt at a time as in a
    left-padded batch of prompts of different lengths, and the same as a plain forward pass over prompt + choice."""
    import torch

    from refinery.device import load_model
    from refinery.prompts import render_prompt

    model, tokenizer = load_model(str(REPO / "data" / "tiny-base"), device="cpu", dtype=torch.float32)
    inputs = ["<weather>Sunny</weather> 2 + 3?", "Ann has 3 apples and buys 12 more. How many apples now?", "1+1"]
    choices = ("Answer", "PASS", "7")
    batched = infer.choose(model, tokenizer, inputs, choices, settings=InferSettings(batch_size=16))
    alone = infer.choose(model, tokenizer, inputs, choices, settings=InferSettings(batch_size=1))
    for one, other in zip(batched, alone, strict=True):
        assert one == pytest.approx(other, abs=1e-4)
    for text, scores in zip(inputs, batched, strict=True):
        for choice, score in zip(choices, scores, strict=True):
            prompt = tokenizer(render_prompt(tokenizer, text))["input_ids"]
            tail = tokenizer(choice, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logprobs = model(torch.tensor([prompt + tail])).logits[0].log_softmax(-1)
            assert score == pytest.approx(sum(logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(tail)),
                                          abs=1e-4)
    assert all(max(row) == row[0] for row in batched)  # the word-problem model starts its answers with "Answer"


def test_each_verdict_format_allows_its_own_answers() -> None:
    assert answer_choices("Is it polite?" + ASK) == ("PASS", "FAIL")
    assert answer_choices("Which reply?" + ASK_PICK) == ("1", "2", "TIE")
    assert answer_choices("How polite?" + ASK_SCORE.format(scale=4, threshold="3")) == ("1", "2", "3", "4")
    assert answer_choices("Is it polite? Say yes or no.") is None


def test_the_likelihood_judge_always_gives_a_verdict_and_caches_apart_from_generated_ones(demo_project) -> None:
    write(demo_project.rules_dir / "judge.toml", RUBRIC)
    rules = load_rules(demo_project.rules_dir)
    results = judge_checks(rules, _rows(), project=demo_project)
    assert len(results) == 2 and not any(d.startswith(NO_VERDICT) for d in results["detail"])
    with Store(demo_project.store_path) as store:
        answers = store.con.execute("SELECT judge, answer FROM judge_verdicts").fetchall()
    for judge, answer in answers:  # the likelier of PASS and FAIL first, with its share of the two
        word, share = answer.split("\n", 1)[0].split(" ")
        assert judge.endswith(" (likelihood)") and word in ("PASS", "FAIL")
        assert share.startswith("(p=") and 0.5 <= float(share[3:7]) <= 1.0
    for answer, detail in zip(sorted(a for _, a in answers), sorted(results["detail"]), strict=True):
        assert detail == " ".join(answer.split("\n", 1)[1].split())  # the reason it wrote after the verdict
    generating = demo_project.with_config(demo_project.config.override("judge", verdict="generate"))
    assert judge_name(generating) == demo_project.config.core.base_model != judge_name(demo_project)
    said = judge_checks(rules, _rows(), project=generating)  # not read from the likelihood verdicts' cache
    assert all(d.startswith(NO_VERDICT) for d in said["detail"])  # it writes "Answer: ...", never PASS or FAIL


def test_likelihood_verdicts_need_a_local_judge(demo_project) -> None:
    with pytest.raises(ConfigError) as caught:  # refused with the config, before any judge is asked
        demo_project.config.override("judge", model="m", base_url="http://127.0.0.1:9/v1", verdict="likelihood")
    assert str(caught.value) == ('command line: verdict = "likelihood" needs a local judge, and base_url = '
                                 '"http://127.0.0.1:9/v1" is an endpoint, which answers with text. Set verdict = '
                                 '"generate" (or "auto"), or remove base_url.')
