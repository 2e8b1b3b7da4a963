"""Persona rubrics: every check on en/ja/zh text, emoji, mixed scripts, broken and nested tags, empty text;
the YAML edge (one clear ConfigError per mistake); the shipped personas' rubrics; the verifiable repair."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from bonsai.errors import ConfigError
from bonsai.personas import Persona, PersonaBook, load_persona
from bonsai.rubric import Rubric, RubricContext, RubricScore, last_opponent_answer, repair, rubric_for
from bonsai.rubric import checks as C
from bonsai.rubric.config import CHECK_TYPES
from bonsai.rubric.repairs import layout, sentences

EN_MOTION = "Cities should ban private cars from their centres"

# --- language ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("Cars pollute our cities.", "en", 1.0),
        ("Cars pollute our cities.", "ja", 0.0),
        ("車は都市を汚染します。", "ja", 1.0),  # kanji and kana
        ("カタカナとひらがなだけ", "ja", 1.0),
        ("汽车污染我们的城市。", "zh", 1.0),
        ("汽车污染我们的城市。", "ja", 0.0),  # all Han, no kana: Chinese (or Han noise), not Japanese
        ("汽车污染我们的城市です", "ja", 1.0 * (2 / 11) / 0.2),  # kana below a fifth of the letters: scaled down
        ("車はとても危険です", "zh", 3 / 9),  # 3 Han letters, 6 kana: kana is not Chinese
        ("2026! 100% ... 🚗🚗🚗 :-)", "en", 0.0),  # no letters at all
        ("", "zh", 0.0),
        ("Über café naïve", "en", 1.0),  # Latin with diacritics
        ("Ｆｕｌｌｗｉｄｔｈ", "en", 1.0),
        ("Привет мир", "en", 0.0),  # Cyrillic is not Latin
        ("🚗 Cars 🚗 pollute 2026!!", "en", 1.0),  # emoji and digits ignored
        ("車は cars", "ja", (2 / 6) * ((1 / 6) / 0.2)),  # mixed scripts: 2 Japanese letters of 6, kana a sixth: scaled
        ("車 cars", "ja", 0.0),  # a kanji without kana is not Japanese
        ("コーヒー々", "ja", 1.0),  # long-vowel and iteration marks belong to Japanese
    ],
)
def test_language_share(text: str, language: str, expected: float) -> None:
    assert C.language_score(text, language) == pytest.approx(expected)  # type: ignore[arg-type]


# --- reasoning format -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "strict", "soft", "tags"),
    [
        ("<reasoning>\nthink\n</reasoning>\n<answer>\nspeak\n</answer>\n", True, True, 0.5),
        ("<reasoning>think</reasoning><answer>speak</answer>", True, True, 0.5),  # whitespace is free
        ("  <reasoning>考える</reasoning>\n<answer>話す</answer>", True, True, 0.5),
        ("Sure! <reasoning>think</reasoning><answer>speak</answer>", False, True, 0.5),  # text before
        ("<reasoning>think</reasoning><answer>speak</answer> and more", False, True, 0.5 - 0.008),  # trailing text
        ("<reasoning>think</reasoning><answer></answer>", False, True, 0.5),  # empty answer
        ("<reasoning>think</reasoning>", False, False, 0.25),  # no answer at all
        ("<reasoning>think\n<answer>speak", False, False, 0.25),  # never closed
        ("<answer>speak</answer><reasoning>think</reasoning>", False, False, 0.5 - 0.001 * 28),  # wrong order, 28 chars after
        ("<reasoning>a<reasoning>b</reasoning></reasoning><answer>c</answer>", False, True, 0.25),  # nested
        ("<reasoning>a</reasoning><answer>b<answer>c</answer></answer>", False, True, 0.25),
        ("<reasoning>a</reasoning><answer>b</answer><answer>c</answer>", False, True, 0.25),  # an answer twice
        ("no tags at all", False, False, 0.0),
        ("", False, False, 0.0),
    ],
)
def test_xml_format_parts(raw: str, strict: bool, soft: bool, tags: float) -> None:
    s = C.format_score(raw, "xml-tags")
    assert (s.strict, s.soft) == (strict, soft)
    assert s.tags == pytest.approx(tags)
    assert s.score == pytest.approx((1.0 * strict + 0.5 * soft + s.tags) / 2.0)


def test_format_score_formula_and_order() -> None:
    perfect = C.format_score("<reasoning>r</reasoning>\n<answer>a</answer>", "xml-tags").score
    soft_only = C.format_score("x <reasoning>r</reasoning>\n<answer>a</answer>", "xml-tags").score
    tags_only = C.format_score("<answer>a</answer><reasoning>r</reasoning>", "xml-tags").score
    half_tags = C.format_score("<reasoning>r", "xml-tags").score
    assert perfect == 1.0 and soft_only == pytest.approx(0.5) and tags_only == pytest.approx((0.5 - 0.001 * 24) / 2)
    assert 1.0 > soft_only > tags_only > half_tags > C.format_score("plain", "xml-tags").score == 0.0


@pytest.mark.parametrize(
    ("raw", "strict", "soft", "tags"),
    [
        ("### Reasoning\nCars pollute.\n\n### Answer\nBan them.", True, True, 0.5),
        ("### Reasoning:\nCars pollute.\n### Answer:\nBan them.\n", True, True, 0.5),
        ("Intro\n### Reasoning\nx\n### Answer\ny", False, True, 0.5),
        ("### Reasoning\nx\n### Answer\n", False, True, 0.5),  # empty answer
        ("### Answer\ny\n### Reasoning\nx", False, False, 0.5),  # wrong order
        ("### Reasoning\nx\n### Answer\ny\n### Answer\nz", False, True, 0.25),  # a heading twice
        ("### Reasoning\nonly thinking", False, False, 0.25),
        ("just an answer", False, False, 0.0),
        ("", False, False, 0.0),
    ],
)
def test_alpaca_format_parts(raw: str, strict: bool, soft: bool, tags: float) -> None:
    s = C.format_score(raw, "alpaca-reasoning")
    assert (s.strict, s.soft, s.tags) == (strict, soft, pytest.approx(tags))


# --- length, patterns, repetition, on_motion -------------------------------------------------------


def test_length_counts_words_in_english_and_characters_in_ja_zh() -> None:
    assert C.count_units("Cars pollute, don't they? 🚗 2026", "en") == 4
    assert C.count_units("車は、都市を汚す。🚗", "ja") == 7  # punctuation and emoji are not characters
    assert C.count_units("汽车 污染 城市", "zh") == 6
    assert C.count_units("Cars pollute", "ja", "words") == 2
    assert C.count_units("", "en") == 0
    assert C.length_score(120, 120) == 1.0
    assert C.length_score(180, 120) == pytest.approx(0.5)
    assert C.length_score(240, 120) == 0.0 and C.length_score(999, 120) == 0.0
    assert C.length_score(0, 120) == 0.0  # empty
    assert C.length_score(5, 120, minimum=10) == 0.5
    assert C.length_score(150, 100, tolerance=0.5) == 0.0


def test_patterns() -> None:
    assert C.pattern_share("We must ban cars.", [r"\bban\b", r"evidence"]) == 0.5
    assert C.pattern_share("禁止すべき", [r"禁止"]) == 1.0
    assert C.pattern_share("", [r"x"]) == 0.0


def test_repetition() -> None:
    assert C.repetition_score("Cars pollute the air in every big city.", "en") == 1.0
    looped = C.repetition_score("the cars the cars the cars the cars the cars", "en")
    assert looped < 0.4
    assert C.repetition_score("車が悪い。車が悪い。車が悪い。車が悪い。", "ja") < 0.4
    assert C.repetition_score("汽车污染城市", "zh") == 1.0
    assert C.repetition_score("hi", "en") == 1.0  # shorter than one n-gram: nothing repeated
    assert C.repetition_score("", "en") == 0.0
    assert C.repetition_score("🚗🚗🚗🚗🚗", "en") == 0.0  # no words at all


def test_on_motion_english_stems_and_stopwords() -> None:
    assert C.on_motion_score("Banning private cars frees the centres.", EN_MOTION) == 1.0  # ban, private, car
    assert C.on_motion_score("Private cars matter.", EN_MOTION) == pytest.approx(2 / 3)
    assert C.on_motion_score("The one that should be there.", EN_MOTION) == 0.0  # stopwords only
    assert C.on_motion_score("Pedestrians die.", EN_MOTION, "Pedestrians die on crowded roads.", shared=2) == 1.0
    assert C.on_motion_score("", EN_MOTION) == 0.0
    assert C.on_motion_score("anything", "the of and") == 1.0  # nothing to compare against


def test_on_motion_uses_character_bigrams_for_ja_and_zh() -> None:
    ja_motion = "都市は自家用車を禁止すべきである"
    assert C.on_motion_score("自家用車の禁止は都市を救う。", ja_motion) == 1.0
    assert C.on_motion_score("猫はかわいいです。", ja_motion) == 0.0
    assert C.on_motion_score("ですます", "ですます") == 1.0  # only grammar on both sides: no reference
    zh_motion = "城市应该禁止私家车"
    assert C.on_motion_score("禁止私家车会让城市更安静。", zh_motion) == 1.0
    assert C.on_motion_score("我们的猫很可爱。", zh_motion) == 0.0
    # mixed: a Japanese speech quoting the English motion's words counts them
    assert C.on_motion_score("private cars を ban すべきです", EN_MOTION) == 1.0


# --- the rubric -------------------------------------------------------------------------------


def book_rubric(name: str) -> Rubric:
    r = rubric_for(PersonaBook.load().get(name))
    assert r is not None
    return r


def test_shipped_rubrics_fit_their_personas() -> None:
    book = PersonaBook.load()
    for name in ("advocate", "skeptic"):
        r = book_rubric(name)
        checks = {c.key: c for c in r.checks}
        assert checks["length"].budget == 120 and {"language", "on_motion", "repetition"} <= set(checks)
        assert book.get(name).language == "en"
    assert "reasoning_format" in {c.key for c in book_rubric("skeptic").checks}
    assert book_rubric("skeptic").describe()[0]["format"] == "alpaca-reasoning"
    ronri = {c["name"]: c for c in book_rubric("ronri").describe()}
    assert ronri["reasoning_format"]["format"] == "xml-tags" and "language" in ronri
    bianlun = {c.key for c in book_rubric("bianlun").checks}
    assert "language" in bianlun and "reasoning_format" not in bianlun  # bianlun has no reasoning format
    assert rubric_for(book.get("judge")) is None and rubric_for(book.get("moderator")) is None


def test_score_reads_the_raw_text_for_format_and_the_answer_for_the_rest() -> None:
    ronri = book_rubric("ronri")
    ctx = RubricContext(EN_MOTION, "ja")
    # English reasoning, Japanese answer: the language check reads the answer only
    s = ronri.score("<reasoning>\nCars are bad.\n</reasoning>\n<answer>\n都市は自家用車を禁止すべきだ。空気がきれいで歩行者も安全になるからです。\n</answer>", ctx)
    assert isinstance(s, RubricScore)
    assert s.checks == {"language": 1.0, "reasoning_format": 1.0, "length": 1.0, "repetition": 1.0} and s.total == 1.0
    # the same words without tags: only the format check drops (weight 2 of 6)
    s = ronri.score("都市は自家用車を禁止すべきだ。空気がきれいで歩行者も安全になるからです。", ctx)
    assert s.checks["reasoning_format"] == 0.0 and s.checks["language"] == 1.0
    assert s.total == pytest.approx(4 / 6)
    assert list(s.checks) == ["language", "reasoning_format", "length", "repetition"]
    short = ronri.score("<reasoning>考え</reasoning><answer>アニシ</answer>", ctx)  # a few characters: not full marks
    assert short.checks["length"] == pytest.approx(3 / 20) and short.total < 0.9
    empty = ronri.score("", ctx)
    assert empty.total == 0.0 and set(empty.checks.values()) == {0.0}


def test_total_is_the_weighted_mean() -> None:
    p = Persona.model_validate({
        "name": "w", "team": "A", "role": "debater", "system_prompt": "x",
        "rubric": [
            {"type": "language", "weight": 3},
            {"type": "required", "patterns": ["evidence"], "weight": 1},
            {"type": "forbidden", "name": "no_tags", "patterns": ["<answer>"], "scope": "raw"},
        ],
    })
    r = rubric_for(p)
    assert r is not None
    s = r.score("Pure English without it", RubricContext(EN_MOTION, "en"))
    assert s.checks == {"language": 1.0, "required": 0.0, "no_tags": 1.0}
    assert s.total == pytest.approx((3 * 1 + 0 + 1) / 5)
    assert r.score("<answer>evidence</answer>", RubricContext(EN_MOTION, "en")).checks["no_tags"] == 0.0
    # a check's own language wins over the context's
    p2 = p.model_copy(update={"rubric": (p.rubric[0].model_copy(update={"language": "zh"}),)})
    assert rubric_for(p2).score("汽车", RubricContext(EN_MOTION, "en")).total == 1.0  # type: ignore[union-attr]


def test_skeptic_scores_alpaca_sections_and_the_opponent() -> None:
    sk = book_rubric("skeptic")
    text = "### Reasoning\nThey ignore commuters.\n\n### Answer\nPedestrians are safer with buses, not bans on commuters."
    alone = sk.score(text, RubricContext(EN_MOTION, "en"))
    answering = sk.score(text, RubricContext(EN_MOTION, "en", opponent_last="Pedestrians die; buses would help."))
    assert alone.checks["reasoning_format"] == 1.0
    assert answering.checks["on_motion"] > alone.checks["on_motion"]
    long = "### Reasoning\nx y z\n\n### Answer\n" + " ".join(f"word{i}" for i in range(180))
    assert sk.score(long, RubricContext(EN_MOTION, "en")).checks["length"] == pytest.approx(0.5)


def test_last_opponent_answer() -> None:
    T = lambda i, team, answer, role="debater": SimpleNamespace(turn_index=i, team=team, answer=answer, role=role)  # noqa: E731
    turns = [T(0, "none", "welcome", "moderator"), T(1, "A", "a1"), T(2, "B", "b1"), T(3, "A", "a2"), T(4, "B", "b2")]
    assert last_opponent_answer(turns, 3, "A") == "b1"
    assert last_opponent_answer(turns, 4, "B") == "a2"
    assert last_opponent_answer(turns, 1, "A") is None


# --- the YAML edge ----------------------------------------------------------------------------


def persona_file(tmp_path: Path, rubric: object, **extra: object) -> Path:
    data = {"name": "probe", "team": "A", "role": "debater", "system_prompt": "Argue.", "rubric": rubric, **extra}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("rubric", "extra", "message"),
    [
        ([{"type": "tone"}], {}, r"rubric\.0: Input tag 'tone'.*'language', 'reasoning_format', 'length'"),
        ([{"type": "language", "weight": 0}], {}, r"rubric\.0\.language\.weight: Input should be greater than 0"),
        ([{"type": "language", "weight": -1.5}], {}, r"weight: Input should be greater than 0"),
        ([{"type": "language", "lang": "ja"}], {}, r"unknown key 'lang' for a language check; valid keys: type, name, weight, language"),
        ([{"type": "required", "patterns": ["ok", "(unclosed"]}], {}, r"pattern '\(unclosed' does not compile"),
        ([{"type": "forbidden", "patterns": []}], {}, r"patterns: List should have at least 1 item"),
        ([{"type": "length"}], {}, r"budget: Field required"),
        ([{"type": "length", "budget": 10, "minimum": 20}], {}, r"minimum 20 is above the budget 10"),
        ([{"type": "language"}, {"type": "language", "language": "ja"}], {}, r"two checks are named 'language'"),
        ([{"type": "reasoning_format"}], {}, r"a reasoning_format check needs a format"),
        ([{"type": "reasoning_format", "format": "json"}], {}, r"format: Input should be 'xml-tags' or 'alpaca-reasoning'"),
        ({"language": 1}, {}, r"rubric: Input should be a valid"),
        ([{"type": "language"}, {"weight": 2}], {}, r"rubric: check 1 has no type: give it one of language, reasoning_format, length"),
    ],
)
def test_bad_rubrics_are_one_clear_config_error(tmp_path: Path, rubric: object, extra: dict, message: str) -> None:
    path = persona_file(tmp_path, rubric, **extra)
    with pytest.raises(ConfigError, match=message) as info:
        load_persona(path)
    assert str(path) in info.value.message


def test_every_check_type_validates(tmp_path: Path) -> None:
    rubric = [
        {"type": "language"}, {"type": "reasoning_format"}, {"type": "length", "budget": 50},
        {"type": "required", "patterns": ["x"]}, {"type": "forbidden", "patterns": ["y"]},
        {"type": "repetition", "n": 2}, {"type": "on_motion", "shared": 2},
    ]
    p = load_persona(persona_file(tmp_path, rubric, reasoning="xml-tags"))
    assert [c.type for c in p.rubric] == list(CHECK_TYPES)
    assert load_persona(persona_file(tmp_path, None)).rubric is None


# --- the repair -------------------------------------------------------------------------------


def test_repair_raises_ronris_score_into_tags_keeping_japanese() -> None:
    ronri = book_rubric("ronri")
    ctx = RubricContext(EN_MOTION, "ja")
    raw = "I agree with the motion. 車は都市の空気を汚します。だから禁止すべきです。Thank you."
    fixed = repair(raw, ronri, ctx)
    assert fixed.improved and fixed.after.total > fixed.before.total
    assert fixed.before.checks["reasoning_format"] == 0.0 and fixed.after.checks["reasoning_format"] == 1.0
    assert fixed.after.checks["language"] == 1.0 > fixed.before.checks["language"]  # English sentences left out
    assert fixed.text == layout("車は都市の空気を汚します。", "だから禁止すべきです。", ronri.reasoning)
    assert ronri.score(fixed.text, ctx) == fixed.after  # verifiable: the score is the rubric's own


def test_repair_keeps_the_models_own_reasoning_and_trims_to_the_budget() -> None:
    ronri = book_rubric("ronri")
    ctx = RubricContext(EN_MOTION, "ja")
    raw = "<reasoning>車は危険だ。" + "".join(f"理由{i}があります。" for i in range(40))  # never closed, far over 150
    fixed = repair(raw, ronri, ctx)
    assert fixed.improved and fixed.after.checks["length"] == 1.0 and fixed.after.checks["reasoning_format"] == 1.0
    answer = fixed.text.split("<answer>")[1].removesuffix("</answer>")
    assert 100 < C.count_units(answer, "ja") <= 150


def test_repair_alpaca_and_plain_personas() -> None:
    sk = book_rubric("skeptic")
    ctx = RubricContext(EN_MOTION, "en")
    raw = "Banning private cars hurts workers. Buses are slow. Private cars give freedom. Buses are slow."
    fixed = repair(raw, sk, ctx)
    assert fixed.improved and fixed.text.startswith("### Reasoning\n") and "\n\n### Answer\n" in fixed.text
    assert fixed.text.count("Buses are slow.") == 1  # the loop's repeated sentence is dropped
    assert fixed.after.checks["reasoning_format"] == 1.0
    bianlun = book_rubric("bianlun")
    zctx = RubricContext(EN_MOTION, "zh")
    raw = "I disagree. 禁止汽车会伤害工人。" + "公共交通太慢了，而且不方便。" * 3 + "Thanks!" + "城市需要自由" * 30
    fixed = repair(raw, bianlun, zctx)
    assert fixed.improved and "<" not in fixed.text and "I disagree" not in fixed.text
    assert fixed.after.checks["language"] == 1.0 and fixed.after.checks["length"] == 1.0


def test_repair_fits_the_turns_token_budget_reasoning_first() -> None:
    """With a budget (here 1 token = 1 character or word, as a stand-in tokenizer), the tags close inside it."""
    ronri = book_rubric("ronri")
    ctx = RubricContext(EN_MOTION, "ja")
    raw = "".join(f"理由{i}があります。" for i in range(6)) + "だから禁止すべきです。"
    unbounded = repair(raw, ronri, ctx)
    fits = lambda text: len(text) <= 90  # noqa: E731
    assert not fits(unbounded.text)
    fixed = repair(raw, ronri, ctx, fits)
    assert fixed.improved and fits(fixed.text) and fixed.after.checks["reasoning_format"] == 1.0
    assert fixed.text.endswith("</answer>")  # closed within the budget
    # the reasoning is cut before the answer: the answer keeps whole sentences, its last one included
    assert fixed.text.split("<answer>")[1] .startswith("\n理由") and fixed.text.endswith("だから禁止すべきです。\n</answer>")
    # English, by words: both parts cut when the reasoning alone cannot make room
    sk = book_rubric("skeptic")
    en = RubricContext(EN_MOTION, "en")
    text = "Banning private cars hurts workers who drive at night. " + " ".join(f"Reason {i} matters a great deal here." for i in range(12))
    words = lambda t: len(t.split())  # noqa: E731
    small = repair(text, sk, en, lambda t: words(t) <= 20)
    assert small.improved and words(small.text) <= 20 and small.after.checks["reasoning_format"] == 1.0
    # a budget nothing fits: no rewrite, nothing claimed
    assert not repair(text, sk, en, lambda t: False).improved


def test_repair_of_a_perfect_or_empty_speech_is_not_an_improvement() -> None:
    ronri = book_rubric("ronri")
    ctx = RubricContext(EN_MOTION, "ja")
    perfect = "<reasoning>\n車は危険です。\n</reasoning>\n<answer>\n禁止すべきです。\n</answer>"
    assert not repair(perfect, ronri, ctx).improved
    nothing = repair("", ronri, ctx)
    assert not nothing.improved and nothing.text == ""
    assert not repair("🚗🚗🚗", ronri, ctx).improved  # no letters: nothing to rewrite


def test_sentences_split_every_language() -> None:
    assert sentences("One. Two! 三つ。四つ？\nfive 🚗. 🚗🚗!") == ["One.", "Two!", "三つ。", "四つ？", "five 🚗."]
