"""The logic problem generator, answer reading and GRPO rewards: pure Python, no model."""

from __future__ import annotations

import itertools
import json

import pytest

from bonsai.errors import ConfigError
from training.logic.answers import is_correct, read_number, read_yesno
from training.logic.problems import (
    FORMS,
    KINDS,
    LANGUAGES,
    NAMES,
    TERMS,
    Problem,
    generate,
    problem_from_spec,
    solve_ordering,
    syllogism_valid,
)
from training.logic.rewards import (
    REWARD_FUNCS,
    correctness,
    correctness_reward,
    extract_answer,
    soft_format,
    strict_format,
    tag_count,
)

# --- the generator ----------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_problems_and_another_seed_others() -> None:
    a = [p.to_json() for p in generate(60, seed=3)]
    assert a == [p.to_json() for p in generate(60, seed=3)]
    b = [p.to_json() for p in generate(60, seed=4)]
    assert a != b
    assert len({(p["canonical"], p["lang"]) for p in a}) == 60  # no problem twice in one set


def test_kinds_and_languages_take_turns() -> None:
    problems = generate(18, seed=0)
    counts = {(k, lang): 0 for k in KINDS for lang in LANGUAGES}
    for p in problems:
        counts[(p.kind, p.lang)] += 1
    assert set(counts.values()) == {2}
    only = generate(6, seed=0, languages=["ja"], kinds="syllogism,ordering")
    assert {p.lang for p in only} == {"ja"} and {p.kind for p in only} == {"syllogism", "ordering"}


def test_train_and_test_never_share_a_problem_whatever_the_seeds() -> None:
    train = {p.canonical for seed in range(3) for p in generate(150, seed=seed, split="train")}
    test = {p.canonical for seed in range(3) for p in generate(150, seed=seed, split="test")}
    assert train and test and not train & test
    assert all(p.split == "test" for p in generate(30, seed=9, split="test"))


def test_translations_of_a_problem_share_its_split() -> None:
    # per language, the same seed draws the same problems: only the wording differs
    by_lang = {lang: generate(30, seed=5, languages=[lang]) for lang in LANGUAGES}
    for en, ja, zh in zip(by_lang["en"], by_lang["ja"], by_lang["zh"], strict=True):
        assert en.canonical == ja.canonical == zh.canonical and en.split == ja.split == zh.split
        assert en.question != ja.question != zh.question


def test_every_answer_checks_against_its_own_problem_and_others_do_not() -> None:
    for p in generate(300, seed=1) + generate(90, seed=1, split="test"):
        assert p.check(p.answer), p
        assert p.check(f"  {p.answer}. "), p
        if p.answer_type == "number":
            assert not p.check(str(int(p.answer) + 1))
        elif p.answer_type == "yesno":
            other = {"yes": "no", "no": "yes"}[p.expected]
            assert not p.check(other)
        else:
            wrong = next(n for n in p.names if n != p.answer)
            assert not p.check(wrong) and not p.check(f"{p.answer} or {wrong}")
        assert Problem.from_json(json.loads(json.dumps(p.to_json(), ensure_ascii=False))) == p


def test_syllogism_forms_are_what_logic_says() -> None:
    valid = {name for name, premises, conclusion in FORMS if syllogism_valid(premises, conclusion)}
    assert valid == {"barbara", "celarent", "camestres", "darii", "datisi"}
    spec = {"kind": "syllogism", "form": 5, "terms": [0, 1, 2]}  # converse: all A are B, all B are C => all C are A?
    assert [problem_from_spec(spec, lang).answer for lang in LANGUAGES] == ["no", "いいえ", "否"]
    answers = [p.expected for p in generate(120, seed=2, kinds=["syllogism"])]
    assert 0.3 < answers.count("yes") / len(answers) < 0.7


def test_orderings_are_solved_from_the_facts() -> None:
    assert solve_ordering([[2, 1, 0], [0, 2, 1]], "max") == 0
    assert solve_ordering([[2, 1, 0], [0, 2, 1]], "min") == 1
    with pytest.raises(ValueError, match="do not decide"):
        solve_ordering([[0, 1, 0], [2, 1, 0]], "max")
    p = problem_from_spec({"kind": "ordering", "relation": "height", "ask": "min", "facts": [[1, 0, 1], [3, 1, 0]], "people": [0, 1, 3]}, "en")
    assert p.answer == "Alice" and "Alice is shorter than Bob." in p.question and "David is taller than Bob." in p.question
    # the same facts said the other way round and in another order are the same problem (the same split)
    q = problem_from_spec({"kind": "ordering", "relation": "height", "ask": "min", "facts": [[3, 1, 1], [1, 0, 0]], "people": [3, 1, 0]}, "en")
    assert q.question != p.question and q.canonical == p.canonical and q.split == p.split


def test_no_name_or_term_hides_inside_another() -> None:
    for words in [*NAMES.values(), *TERMS.values()]:
        for a, b in itertools.permutations(words, 2):
            assert a not in b


def test_bad_generator_input() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        generate(0)
    with pytest.raises(ConfigError, match="fr is not allowed"):
        generate(3, languages="en,fr")
    with pytest.raises(ConfigError, match="named twice"):
        generate(3, kinds="ordering,ordering")
    with pytest.raises(ConfigError, match="unknown split"):
        generate(3, split="dev")  # type: ignore[arg-type]


# --- reading answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("9", "9"), ("９", "9"), ("The answer is 12 apples.", "12"), ("1,200", "1200"), ("答え: 7個", "7"), ("十二", "12"), ("三百零五", "305"),
     ("二十", "20"), ("7 or 8", None), ("none", None), ("3.50", "3.5")],
)
def test_numbers_are_read_by_value(text: str, value: str | None) -> None:
    assert read_number(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("Yes", "yes"), ("no.", "no"), ("YES, it follows", "yes"), ("nothing follows", None), ("はい", "yes"), ("いいえ、言えません", "no"),
     ("言えない", "no"), ("是", "yes"), ("是的", "yes"), ("否", "no"), ("不是", "no"), ("不能", "no"), ("「はい」", "yes"), ("maybe", None)],
)
def test_yes_and_no_in_three_languages(text: str, value: str | None) -> None:
    assert read_yesno(text) == value


def test_names_need_exactly_one_candidate() -> None:
    names = ("Alice", "Bob", "Carol")
    assert is_correct("name", "Bob", "Bob is the tallest", names)
    assert not is_correct("name", "Bob", "bobby", names)
    assert not is_correct("name", "Bob", "Bob and Alice", names)
    assert is_correct("name", "花子", "花子さん", ("太郎", "花子"))
    assert not is_correct("name", "花子", None, ("太郎", "花子"))


# --- rewards ------------------------------------------------------------------------------------------

GOOD = {
    "en": "<reasoning>\n7 + 5 - 3 = 9\n</reasoning>\n<answer>\n9\n</answer>",
    "ja": "<reasoning>すべてのワグはダックスなので、言える。</reasoning><answer>はい</answer>",
    "zh": "<reasoning>小红比小华高,小华比小明高。</reasoning>\n<answer>小红</answer>\n",
}
CHECKS = {
    "en": ("number", "9", ()),
    "ja": ("yesno", "yes", ()),
    "zh": ("name", "小红", ("小明", "小红", "小华")),
}


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_good_completion_gets_every_reward(lang: str) -> None:
    text = GOOD[lang]
    assert strict_format(text) == 0.5 and soft_format(text) == 0.5 and tag_count(text) == 0.5
    assert correctness(text, *CHECKS[lang]) == 2.0


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_wrong_answer_keeps_the_format_rewards_only(lang: str) -> None:
    wrong = {"en": "10", "ja": "いいえ", "zh": "小明"}[lang]
    text = GOOD[lang].replace(CHECKS[lang][1] if lang != "ja" else "はい", wrong)
    assert strict_format(text) == 0.5 and correctness(text, *CHECKS[lang]) == 0.0


@pytest.mark.parametrize(
    ("text", "strict", "soft", "tags"),
    [
        ("9", 0.0, 0.0, 0.0),  # no tags at all
        ("<reasoning>r</reasoning><answer>9</answer> and more", 0.0, 0.5, 0.5 - 0.008),  # text after the answer
        ("Sure! <reasoning>r</reasoning><answer>9</answer>", 0.0, 0.5, 0.5),  # text before
        ("<reasoning>r</reasoning><answer>9", 0.0, 0.0, 0.375),  # never closed
        ("<answer>9</answer><reasoning>r</reasoning>", 0.0, 0.0, 0.5 - 0.024),  # out of order: the reasoning trails the answer
        ("<reasoning><reasoning>r</reasoning></reasoning><answer>9</answer>", 0.0, 0.0, 0.25),  # nested
        ("<reasoning>r<answer>8</answer></reasoning><answer>9</answer>", 0.0, 0.0, 0.25),  # answer inside reasoning
        ("<reasoning> </reasoning><answer>9</answer>", 0.0, 0.5, 0.5),  # empty reasoning
        ("<REASONING>r</REASONING><ANSWER>9</ANSWER>", 0.0, 0.0, 0.0),  # tags are case-sensitive
    ],
)
def test_broken_and_nested_tags(text: str, strict: float, soft: float, tags: float) -> None:
    assert strict_format(text) == strict
    assert soft_format(text) == soft
    assert tag_count(text) == pytest.approx(tags)


def test_the_answer_section_is_read_leniently_for_correctness() -> None:
    assert extract_answer("<reasoning>r</reasoning><answer>9") == "9"  # cut off before closing
    assert extract_answer("<reasoning>r<answer>8</answer></reasoning><answer>9</answer>") == "9"  # the last one
    assert extract_answer("<answer><answer>はい</answer></answer>") == "はい"
    assert extract_answer("<answer> </answer>") is None and extract_answer("") is None
    # no answer section: what follows the reasoning, else the whole text (a signal before the tags are learnt)
    assert extract_answer("<reasoning>7 + 2 = 9</reasoning> 9") == "9"
    assert correctness("Yes, it follows.", "yesno", "yes") == 2.0
    assert correctness("7 + 5 - 3 = 9, so 9", "number", "9") == 0.0  # several numbers: no single answer
    assert correctness("<reasoning>7 + 5 - 3 = 9</reasoning>", "number", "9") == 0.0  # reasoning is not an answer


def test_trl_wrappers_take_chat_completions_and_the_check_column() -> None:
    completions = [[{"role": "assistant", "content": GOOD["en"]}], [{"role": "assistant", "content": "<answer>10</answer>"}]]
    check = [json.dumps({"answer_type": "number", "expected": "9", "names": []})] * 2
    assert correctness_reward(completions, check=check, prompts=[[], []], trainer_state=None) == [2.0, 0.0]
    names = [f.__name__ for f in REWARD_FUNCS]
    assert names == ["correctness_reward", "strict_format_reward", "soft_format_reward", "tag_count_reward"]
    assert [f(["plain <answer>9</answer>"], check=check[:1])[0] for f in REWARD_FUNCS] == [2.0, 0.0, 0.0, 0.25]


# --- `bonsai data logic` -------------------------------------------------------------------------------


def test_cli_prints_or_writes_the_problems(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from bonsai.cli.main import main

    assert main(["data", "logic", "--n", "5", "--lang", "ja", "--seed", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Problem.from_json(r) for r in rows] == generate(5, seed=1, languages=["ja"])
    out = tmp_path / "held-out.jsonl"
    assert main(["data", "logic", "--n", "4", "--split", "test", "--kinds", "ordering", "-o", str(out)]) == 0
    assert [json.loads(line)["split"] for line in out.read_text(encoding="utf-8").splitlines()] == ["test"] * 4
    assert main(["data", "logic", "--lang", "fr", "-o", str(tmp_path / "no.jsonl")]) == 2
    assert "fr is not allowed" in capsys.readouterr().err and not (tmp_path / "no.jsonl").exists()
