"""The judge's pure logic: verdict parsing that never raises, label probabilities from top logprobs,
and the two-order combination that cancels a bias for the label "A"."""

from __future__ import annotations

import json
import math
import random
import string

import jsonschema
import pytest
from fakes import FakeEngine

from bonsai.debate.judge import (
    WINNER_PREFIX,
    OrderReading,
    _label_probs,
    combine,
    decide,
    judge_debate,
    judge_messages,
    labels_for,
    mirrored,
    parse_verdict,
    read_once,
    side_win_probability,
    verdict_schema,
)
from bonsai.personas import PersonaBook

CRITERIA = ["logic", "rebuttal"]
GOOD = {"winner": "B", "scores": {"A": {"logic": 6, "rebuttal": 4}, "B": {"logic": 8, "rebuttal": 7}}, "rationale": "B answered the cost point."}


# --- parse_verdict ------------------------------------------------------------------------------


def test_parses_a_good_verdict() -> None:
    winner, scores, rationale, error = parse_verdict(json.dumps(GOOD), CRITERIA)
    assert (winner, error) == ("B", None)
    assert scores == {"A": {"logic": 6.0, "rebuttal": 4.0}, "B": {"logic": 8.0, "rebuttal": 7.0}}
    assert rationale == "B answered the cost point."


def test_text_that_begins_after_the_winner_prefix() -> None:
    # a model continuing the probe's pre-filled '{"winner": "' writes only the rest
    rest = json.dumps(GOOD)[len(WINNER_PREFIX):]
    assert rest.startswith('B"')
    winner, scores, _, error = parse_verdict(rest, CRITERIA)
    assert winner == "B" and error is None and set(scores) == {"A", "B"}
    winner, _, _, error = parse_verdict('A", "rationale": "short"', CRITERIA)
    assert winner == "A" and error is not None


def test_json_inside_chatter() -> None:
    text = "Sure! Here is my verdict:\n```json\n" + json.dumps(GOOD) + "\n```\nHope this helps."
    winner, scores, rationale, error = parse_verdict(text, CRITERIA)
    assert winner == "B" and error is None and scores["B"]["logic"] == 8.0 and rationale


def test_truncated_json_keeps_what_it_can() -> None:
    full = json.dumps(GOOD)
    cut = full[: full.index('"rebuttal": 7') + len('"rebuttal": 7')]  # cut in a number: it may have been 70
    winner, scores, rationale, error = parse_verdict(cut, CRITERIA)
    assert winner == "B"  # recovered by pattern
    assert scores == {}  # scores are only trusted from parsed JSON
    assert error is not None and error.startswith("invalid JSON")


def test_out_of_range_scores_are_clamped_and_bools_ignored() -> None:
    data = {"winner": "A", "scores": {"A": {"logic": 42, "rebuttal": -3}, "B": {"logic": True, "rebuttal": 7.5}}, "rationale": "x"}
    winner, scores, _, error = parse_verdict(json.dumps(data), CRITERIA)
    assert winner == "A" and error is None
    assert scores == {"A": {"logic": 10.0, "rebuttal": 1.0}, "B": {"rebuttal": 7.5}}


def test_wrong_types_are_ignored() -> None:
    data = {"winner": ["A"], "scores": {"A": "great", "B": {"logic": "8", "rebuttal": None}}, "rationale": 3}
    winner, scores, rationale, error = parse_verdict(json.dumps(data), CRITERIA)
    assert winner is None and scores == {} and rationale == ""
    assert error == "JSON lacks winner or scores"


def test_missing_fields() -> None:
    winner, scores, rationale, error = parse_verdict('{"winner": "A"}', CRITERIA)
    assert winner == "A" and scores == {} and rationale == "" and error == "JSON lacks winner or scores"
    winner, scores, _, error = parse_verdict('{"scores": {"A": {"logic": 5}, "B": {"logic": 6}}}', CRITERIA)
    assert winner is None and scores == {"A": {"logic": 5.0}, "B": {"logic": 6.0}} and error is not None


def test_huge_and_special_numbers_do_not_raise() -> None:
    text = '{"winner": "A", "scores": {"A": {"logic": ' + "9" * 400 + '}, "B": {"logic": NaN, "rebuttal": -Infinity}}, "rationale": ""}'
    winner, scores, _, _ = parse_verdict(text, CRITERIA)
    assert winner == "A"
    assert scores == {"A": {"logic": 10.0}, "B": {"rebuttal": 1.0}}  # NaN is not a score


@pytest.mark.parametrize(
    "text",
    ["", " ", "A", "B", "AB", "{", "}", "{}", "[]", "null", "true", "42", '"A"', "} {", "{{{", "[" * 5000, "{" * 5000,
     '{"winner": "C"}', '{"winner": null, "scores": null}', '{"scores": {"A": [1, 2]}}', '{"winner": "A", "scores": {"A": {"logic": {}}}}',
     "\x00\x01", "🙂 {\"winner\": \"B\"", 'Actually, side A wins because "winner": "B"'],
)
def test_garbage_never_raises(text: str) -> None:
    winner, scores, rationale, error = parse_verdict(text, CRITERIA)
    assert winner in (None, "A", "B")
    assert isinstance(scores, dict) and isinstance(rationale, str)
    assert error is not None  # none of these is a complete verdict


def test_fuzz_never_raises_and_stays_in_range() -> None:
    rng = random.Random(1234)
    good = json.dumps(GOOD)
    alphabet = string.printable + "{}[]\":,AB日本"
    values = [None, True, False, 0, -1, 11, 5.5, 1e308, -1e308, "7", [], {}, "A", "B", 10**30]

    def random_json(depth: int = 0):  # type: ignore[no-untyped-def]
        if depth > 3 or rng.random() < 0.3:
            return rng.choice(values)
        if rng.random() < 0.5:
            return [random_json(depth + 1) for _ in range(rng.randint(0, 3))]
        keys = ["winner", "scores", "rationale", "A", "B", *CRITERIA, "x"]
        return {rng.choice(keys): random_json(depth + 1) for _ in range(rng.randint(0, 4))}

    samples: list[str] = []
    for _ in range(1500):
        r = rng.random()
        if r < 0.3:  # truncated good JSON
            samples.append(good[: rng.randint(0, len(good))])
        elif r < 0.5:  # good JSON with characters mutated
            chars = list(good)
            for _ in range(rng.randint(1, 6)):
                chars[rng.randrange(len(chars))] = rng.choice(alphabet)
            samples.append("".join(chars))
        elif r < 0.7:  # JSON of the wrong shape
            samples.append(json.dumps(random_json()))
        elif r < 0.8:  # the tail after the winner prefix, truncated
            tail = good[len(WINNER_PREFIX):]
            samples.append(tail[: rng.randint(0, len(tail))])
        else:  # noise
            samples.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))))
    for text in samples:
        winner, scores, rationale, error = parse_verdict(text, CRITERIA)
        assert winner in (None, "A", "B"), text
        assert set(scores) <= {"A", "B"}, text
        for side in scores.values():
            assert set(side) <= set(CRITERIA) and side, text
            assert all(isinstance(v, float) and 1.0 <= v <= 10.0 for v in side.values()), text
        assert isinstance(rationale, str) and rationale == rationale.strip()
        assert error is None or isinstance(error, str)
        if error is None:
            assert winner is not None and len(scores) == 2, text


# --- label probabilities ------------------------------------------------------------------------


def test_label_probs_renormalise_over_the_two_labels() -> None:
    probs, found = _label_probs({"A": math.log(0.3), "B": math.log(0.1), "The": math.log(0.5)})
    assert found
    assert probs["A"] == pytest.approx(0.75) and probs["B"] == pytest.approx(0.25)


def test_label_tokens_with_spaces_quotes_and_case_are_merged() -> None:
    top = {"A": math.log(0.2), " A": math.log(0.1), '"B': math.log(0.2), "b": math.log(0.1), "Both": math.log(0.3)}
    probs, found = _label_probs(top)
    assert found and probs["A"] == pytest.approx(0.5)
    probs, _ = _label_probs({' "A"': math.log(0.6), "B ": math.log(0.2)})
    assert probs["A"] == pytest.approx(0.75)


def test_missing_label_gets_less_than_the_least_likely_token() -> None:
    top = {"A": math.log(0.4), "The": math.log(0.1), "I": math.log(0.05)}
    probs, found = _label_probs(top)
    assert found
    # B is not in the top list, so it is below the last shown token (assumed at half of it)
    assert probs["A"] == pytest.approx(0.4 / (0.4 + 0.025))
    probs, found = _label_probs({"B": math.log(0.9)})
    assert found and probs["B"] > 0.5


def test_no_label_at_all_is_a_coin_flip_and_flagged() -> None:
    assert _label_probs({"The": -0.1, "I": -2.0}) == ({"A": 0.5, "B": 0.5}, False)
    assert _label_probs({}) == ({"A": 0.5, "B": 0.5}, False)


def test_extreme_logprobs_stay_finite() -> None:
    probs, found = _label_probs({"A": -800.0, " A": -800.0, "B": -801.0, "x": -1.0})
    assert found and 0.5 < probs["A"] < 1.0 and math.isfinite(probs["B"])
    probs, _ = _label_probs({"A": float("-inf"), "x": float("-inf")})
    assert probs == {"A": 0.5, "B": 0.5}
    probs, _ = _label_probs({"A": 0.0, "B": float("-inf")})
    assert probs == {"A": 1.0, "B": 0.0}


# --- combining the two orders -------------------------------------------------------------------


def reading(
    order: str,
    p_label_a: float,
    winner_label: str | None = None,
    scores_by_label: dict | None = None,
    error: str | None = None,
    layout: str = "spoken",
    found: bool = True,
) -> OrderReading:
    """One reading as read_once builds it, from what the judge said about the *labels*."""
    labels = labels_for(order)  # team -> label
    team_of = {v: k for k, v in labels.items()}
    label_probs = {"A": p_label_a, "B": 1 - p_label_a}
    return OrderReading(
        order=order,
        prob_team_a=label_probs[labels["A"]],
        label_probs=label_probs,
        found_labels=found,
        text="",
        winner_team=team_of[winner_label] if winner_label else None,
        scores={team_of[lbl]: s for lbl, s in (scores_by_label or {}).items()},
        rationale="r",
        error=error,
        layout=layout,
    )


def four(p_spoken_ab: float, p_spoken_ba: float, p_mirrored_ab: float, p_mirrored_ba: float) -> list[OrderReading]:
    """The four readings of one judge, each given as P(label "A")."""
    return [
        reading("AB", p_spoken_ab), reading("BA", p_spoken_ba),
        reading("AB", p_mirrored_ab, layout="mirrored"), reading("BA", p_mirrored_ba, layout="mirrored"),
    ]


def test_labels_for_orders() -> None:
    assert labels_for("AB") == {"A": "A", "B": "B"}
    assert labels_for("BA") == {"A": "B", "B": "A"}


@pytest.mark.parametrize("bias", [0.5, 0.7, 0.93])
def test_pure_label_bias_cancels_into_a_tie(bias: float) -> None:
    # the judge prefers the label "A" equally whichever team wears it
    v = combine("judge", "d1", [reading("AB", bias, "A"), reading("BA", bias, "A")])
    assert v.prob_a == pytest.approx(0.5) and v.winner == "tie"
    assert v.confidence == pytest.approx(0.5)


def test_real_preference_survives_the_swap() -> None:
    # team B is better: it gets P=0.8 as label "B" in AB, and as label "A" in BA
    v = combine("judge", "d1", [reading("AB", 0.2, "B"), reading("BA", 0.8, "A")])
    assert v.prob_a == pytest.approx(0.2) and v.winner == "B" and v.confidence == pytest.approx(0.8)
    # a preference on top of a label bias: team A better, the judge also likes label "A"
    v = combine("judge", "d1", [reading("AB", 0.9, "A"), reading("BA", 0.5, "B")])
    assert v.prob_a == pytest.approx(0.7) and v.winner == "A"


def test_position_bias_cancels_between_the_layouts() -> None:
    """The judge likes whoever it reads first by 0.1, on top of a label bias: the spoken layout (team A
    first) leans to A, the mirrored one (team B first) to B. They disagree: a tie, at P = 0.5 exactly."""
    v = combine("judge", "d", four(0.8 + 0.1, 0.8 - 0.1, 0.8 - 0.1, 0.8 + 0.1))
    assert v.prob_a == pytest.approx(0.5) and v.winner == "tie"
    # the same position bias on top of a real preference for team A (+0.15) that survives both layouts
    v = combine("judge", "d", four(0.8 + 0.25, 0.8 - 0.25, 0.8 + 0.05, 0.8 - 0.05))
    assert v.prob_a == pytest.approx(0.65) and v.winner == "A"


def test_layouts_that_disagree_are_a_tie_even_outside_the_band() -> None:
    # spoken: P(team A) 0.9, mirrored: 0.45 -> mean 0.675 is far outside the band, but position decided it
    v = combine("judge", "d", four(0.9, 0.1, 0.45, 0.55))
    assert v.prob_a == pytest.approx(0.675) and v.winner == "tie"


@pytest.mark.parametrize(
    ("p_team_a", "band", "winner"),
    [(0.51, 0.05, "tie"), (0.549, 0.05, "tie"), (0.56, 0.05, "A"), (0.44, 0.05, "B"), (0.46, 0.05, "tie"),
     (0.51, 0.0, "A"), (0.5, 0.0, "tie"), (0.7, 0.25, "tie"), (0.8, 0.25, "A")],
)
def test_tie_band(p_team_a: float, band: float, winner: str) -> None:
    # no label bias, the same P in both layouts: only the band decides
    v = combine("judge", "d", four(p_team_a, 1 - p_team_a, p_team_a, 1 - p_team_a), band)
    assert v.prob_a == pytest.approx(p_team_a) and v.winner == winner and v.tie_band == band


def test_without_logprobs_only_unanimous_json_winners_win() -> None:
    """An engine that returns no logprobs: every P is 0.5; the JSON verdicts decide if they agree."""
    agree = [reading("AB", 0.5, "B", found=False), reading("BA", 0.5, "A", found=False, layout="mirrored")]  # both: team B
    assert combine("judge", "d", agree).winner == "B"
    disagree = [reading("AB", 0.5, "A", found=False), reading("BA", 0.5, "A", found=False, layout="mirrored")]  # A, then B
    assert combine("judge", "d", disagree).winner == "tie"
    unparsed = [reading("AB", 0.5, "B", found=False), reading("BA", 0.5, None, error="x", found=False, layout="mirrored")]
    assert combine("judge", "d", unparsed).winner == "tie"


def test_decide_for_a_panel() -> None:
    assert decide(0.7, ["A", "B"], 0.05, informative=True) == "tie"  # judges disagree
    assert decide(0.7, ["A", "tie"], 0.05, informative=True) == "A"
    assert decide(0.52, ["A", "A"], 0.05, informative=True) == "tie"  # the mean is in the band
    assert decide(0.5, ["B", "B"], 0.05, informative=False) == "B"
    assert decide(0.5, ["B", "tie"], 0.05, informative=False) == "tie"


def test_combined_record_fields() -> None:
    v = combine("judge", "d9", [reading("AB", 0.7, "A", error="bad"), reading("BA", 0.4, "B")])
    assert v.debate_id == "d9" and v.judge == "judge"
    assert v.prob_a == pytest.approx(0.65)
    assert v.parsed  # one order parsed
    assert [o["order"] for o in v.orders] == ["AB", "BA"]
    assert not combine("judge", "d9", [reading("AB", 0.7, error="x"), reading("BA", 0.4, error="y")]).parsed


async def test_judge_debate_reads_four_times_sharing_a_prefix_per_layout() -> None:
    """Per layout: one probe alone, then its JSON verdict and the other labelling's probe; the two prompts
    of a layout differ only in their last sentence. A judge with a real preference for B wins it for B."""
    judge = PersonaBook.load().get("judge")
    engine = FakeEngine(p_a=0.75, prefer_team="B")
    per_judge, panel = await judge_debate(engine, [judge], {}, "d", "m", TURNS, CRITERIA, 64, 1, tie_band=0.1)
    assert panel is per_judge[0] and panel.winner == "B" and panel.prob_a == pytest.approx(0.25) and panel.tie_band == 0.1
    probes = [r for r in engine.calls if r.sampling.max_tokens == 1]
    verdicts = [r for r in engine.calls if r.sampling.max_tokens != 1]
    assert len(probes) == 4 and len(verdicts) == 2
    assert sorted(r.request_id for r in engine.calls) == sorted([
        "d-judge-judge-AB-probe", "d-judge-judge-AB-json", "d-judge-judge-BA-probe",
        "d-judge-judge-mirrored-BA-probe", "d-judge-judge-mirrored-BA-json", "d-judge-judge-mirrored-AB-probe",
    ])
    for in_layout in (lambda rid: "mirrored" not in rid, lambda rid: "mirrored" in rid):
        users = [r.prompt.messages[1].content for r in engine.calls if in_layout(r.request_id)]
        cut = users[0].rindex("\n")
        assert len(users) == 3 and all(u[:cut] == users[0][:cut] for u in users)
    # the first request of each layout goes alone: it is sent before the other two of its layout
    ids = [r.request_id for r in engine.calls]
    assert ids.index("d-judge-judge-AB-probe") < min(ids.index("d-judge-judge-AB-json"), ids.index("d-judge-judge-BA-probe"))
    assert ids.index("d-judge-judge-mirrored-BA-probe") < ids.index("d-judge-judge-mirrored-AB-probe")


async def test_a_panel_of_judges_that_agree() -> None:
    book = PersonaBook.load()
    judge = book.get("judge")
    engine = FakeEngine(p_a=0.75, prefer_team="B")
    per_judge, panel = await judge_debate(engine, [judge, judge.model_copy(update={"name": "judge2"})], {}, "d", "m", TURNS, CRITERIA, 64, 1)
    assert [v.winner for v in per_judge] == ["B", "B"] and panel.judge == "panel" and panel.winner == "B"
    assert len(panel.orders) == 8


async def test_best_of_n_score_stays_continuous() -> None:
    """side_win_probability is never snapped to a tie: inside the band it is still the judge's P."""
    judge = PersonaBook.load().get("judge")
    for p, expected_b in ((0.52, 0.52), (0.9, 0.9), (0.7, 0.7)):
        engine = FakeEngine(p_a=p, prefer_team="B")
        assert await side_win_probability(engine, judge, None, "m", TURNS, "B", CRITERIA, "r") == pytest.approx(expected_b)
        assert await side_win_probability(engine, judge, None, "m", TURNS, "A", CRITERIA, "r") == pytest.approx(1 - expected_b)
    # a pure label bias scores both sides 0.5, not a tie label
    assert await side_win_probability(FakeEngine(p_a=0.9), judge, None, "m", TURNS, "A", CRITERIA, "r") == pytest.approx(0.5)


async def test_read_once_maps_labels_back_to_teams() -> None:
    judge = PersonaBook.load().get("judge")
    verdict = json.dumps({"winner": "A", "scores": {"A": {"logic": 9}, "B": {"logic": 2}}, "rationale": "label A was better"})
    engine = FakeEngine(p_a=0.7, judge_json=verdict)
    turns = [
        {"kind": "debater", "team": "A", "title": "opening", "speaker": "advocate", "answer": "pro"},
        {"kind": "debater", "team": "B", "title": "opening", "speaker": "skeptic", "answer": "con"},
    ]
    ab = await read_once(engine, judge, None, "m", turns, "AB", ["logic"], 64, "r-ab", 1)
    ba = await read_once(engine, judge, None, "m", turns, "BA", ["logic"], 64, "r-ba", 1)
    assert ab.winner_team == "A" and ab.scores == {"A": {"logic": 9.0}, "B": {"logic": 2.0}}
    assert ba.winner_team == "B" and ba.scores == {"B": {"logic": 9.0}, "A": {"logic": 2.0}}
    assert ab.prob_team_a == pytest.approx(0.7) and ba.prob_team_a == pytest.approx(0.3)
    assert combine("judge", "d", [ab, ba]).prob_a == pytest.approx(0.5)
    # the JSON request was schema-guided; the probe was pre-filled with the winner prefix
    json_req = next(r for r in engine.calls if r.request_id == "r-ab-json")
    assert json_req.sampling.json_schema == verdict_schema(["logic"])
    probe = next(r for r in engine.calls if r.request_id == "r-ab-probe")
    assert probe.prompt.continue_final_message and probe.prompt.messages[-1].content == WINNER_PREFIX
    assert probe.sampling.max_tokens == 1 and probe.sampling.logprobs


# --- what the judge reads -----------------------------------------------------------------------

TURNS = [
    {"kind": "moderator", "team": "none", "title": "opening", "speaker": "moderator", "answer": "MOD-INTRO"},
    {"kind": "debater", "team": "A", "title": "opening", "speaker": "advocate", "answer": "PRO-SPEECH"},
    {"kind": "debater", "team": "B", "title": "opening", "speaker": "skeptic", "answer": "CON-SPEECH"},
    {"kind": "debater", "team": "B", "title": "rebuttal", "speaker": "skeptic", "answer": "CON-REBUTTAL"},
]


def test_judge_messages_order_ab() -> None:
    judge = PersonaBook.load().get("judge")
    system, user = judge_messages(judge, "Tea beats coffee", TURNS, "AB", CRITERIA)
    assert system.role == "system" and user.role == "user"
    body = user.content
    # speeches in speaking order, named by stance; the labels only in the last sentence
    assert body.index("Opening, advocate (for the motion):\nPRO-SPEECH") < body.index("Opening, skeptic (against the motion):\nCON-SPEECH")
    assert body.index("CON-SPEECH") < body.index("Rebuttal, skeptic (against the motion):\nCON-REBUTTAL")
    assert body.endswith('call the side for the motion "A" and the side against the motion "B".')
    assert "MOD-INTRO" not in body
    assert '"logic": <1-10>, "rebuttal": <1-10>' in body


def test_judge_messages_order_ba_swaps_only_the_labels() -> None:
    judge = PersonaBook.load().get("judge")
    ab = judge_messages(judge, "Tea beats coffee", TURNS, "AB", CRITERIA)[1].content
    ba = judge_messages(judge, "Tea beats coffee", TURNS, "BA", CRITERIA)[1].content
    assert ba.endswith('call the side against the motion "A" and the side for the motion "B".')
    # everything before the labelling sentence is shared: the second reading comes from the prefix cache
    shared = ab.rindex("\n")
    assert ab[:shared] == ba[:shared] and shared > ab.index("CON-REBUTTAL")


def test_judge_prompt_only_grows_with_the_debate() -> None:
    """Best-of-N scores candidates turn by turn: the prompt for turn n must extend the one for turn n-1."""
    judge = PersonaBook.load().get("judge")
    earlier = judge_messages(judge, "m", TURNS[:3], "AB", CRITERIA)[1].content
    later = judge_messages(judge, "m", TURNS, "AB", CRITERIA)[1].content
    cut = earlier.index("Which side argued better?")
    assert later.startswith(earlier[:cut].rstrip())


def test_judge_messages_with_a_silent_side() -> None:
    judge = PersonaBook.load().get("judge")
    _, user = judge_messages(judge, "m", TURNS[:2], "AB", CRITERIA)
    assert "The side against the motion has not spoken." in user.content
    assert "for the motion has not spoken" not in user.content


def test_mirrored_layout_reverses_each_phase() -> None:
    turns = [
        {"kind": "debater", "team": "A", "title": "opening", "speaker": "advocate", "answer": "A1"},
        {"kind": "debater", "team": "B", "title": "opening", "speaker": "skeptic", "answer": "B1"},
        {"kind": "moderator", "team": "none", "title": "rebuttal", "speaker": "moderator", "answer": "M"},
        {"kind": "debater", "team": "B", "title": "rebuttal", "speaker": "skeptic", "answer": "B2"},
        {"kind": "debater", "team": "A", "title": "rebuttal", "speaker": "advocate", "answer": "A2"},
        {"kind": "debater", "team": "A", "title": "closing", "speaker": "advocate", "answer": "A3"},
    ]
    assert [t["answer"] for t in mirrored(turns)] == ["B1", "A1", "A2", "B2", "A3"]
    judge = PersonaBook.load().get("judge")
    spoken = judge_messages(judge, "m", turns, "AB", CRITERIA)[1].content
    mirror = judge_messages(judge, "m", turns, "AB", CRITERIA, "mirrored")[1].content
    assert spoken.index("A1") < spoken.index("B1") and mirror.index("B1") < mirror.index("A1")
    assert mirror.index("A2") < mirror.index("B2") and "M" not in mirror.split("Motion")[1].split("Which side")[0].split()
    assert "in reverse order" in mirror and "in the order they were given" in spoken
    # the two labellings of the mirrored layout share everything up to the labelling sentence
    mirror_ba = judge_messages(judge, "m", turns, "BA", CRITERIA, "mirrored")[1].content
    cut = mirror.rindex("\n")
    assert mirror[:cut] == mirror_ba[:cut] and cut > mirror.index("A3")


def test_a_verdict_cut_inside_its_rationale_keeps_winner_and_scores() -> None:
    """The token limit cut a tiny model's rationale ("1000…") in a real run: the verdict itself was complete."""
    cut = '{"winner": "B","scores":{"A":{"logic":1,"rebuttal":2},"B":{"logic":3,"rebuttal":4}},"rationale":"B was cle'
    winner, scores, rationale, error = parse_verdict(cut, CRITERIA)
    assert (winner, error) == ("B", None)
    assert scores == {"A": {"logic": 1.0, "rebuttal": 2.0}, "B": {"logic": 3.0, "rebuttal": 4.0}}
    assert rationale == "B was cle…"


def test_close_truncated() -> None:
    from bonsai.debate.judge import close_truncated

    assert close_truncated('{"a": [1, {"b": "x\\') == '{"a": [1, {"b": "x"}]}'  # a cut escape is dropped
    assert close_truncated('{"a": [1, 2,') is None  # cut outside a string
    assert close_truncated('{"a": 1} trailing') is None  # complete: nothing to close
    assert close_truncated("no json") is None


def test_a_verdict_cut_before_its_scores_end_is_still_an_error() -> None:
    winner, scores, _, error = parse_verdict('{"winner": "A", "scores": {"A": {"logic": 3}, "B": {"lo', CRITERIA)
    assert winner == "A" and error is not None and "B" not in scores


# --- the schema ---------------------------------------------------------------------------------


def test_verdict_schema_is_valid_and_accepts_a_verdict() -> None:
    schema = verdict_schema(CRITERIA)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(GOOD, schema)


@pytest.mark.parametrize(
    "bad",
    [
        {**GOOD, "winner": "C"},
        {**GOOD, "scores": {**GOOD["scores"], "A": {"logic": 11, "rebuttal": 4}}},
        {**GOOD, "scores": {**GOOD["scores"], "A": {"logic": 0, "rebuttal": 4}}},
        {**GOOD, "scores": {**GOOD["scores"], "A": {"logic": 6}}},
        {**GOOD, "scores": {**GOOD["scores"], "A": {"logic": 6.5, "rebuttal": 4}}},
        {**GOOD, "scores": {**GOOD["scores"], "C": {"logic": 6, "rebuttal": 4}}},
        {**GOOD, "extra": 1},
        {k: v for k, v in GOOD.items() if k != "rationale"},
        {**GOOD, "rationale": "x" * 301},
    ],
)
def test_verdict_schema_rejects_bad_verdicts(bad: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, verdict_schema(CRITERIA))


def test_what_the_schema_accepts_parse_verdict_accepts() -> None:
    schema = verdict_schema(CRITERIA)
    rng = random.Random(5)
    for _ in range(200):
        v = {
            "winner": rng.choice("AB"),
            "scores": {s: {c: rng.randint(1, 10) for c in CRITERIA} for s in "AB"},
            "rationale": "".join(rng.choice(string.ascii_letters + ' "\\') for _ in range(rng.randint(0, 40))),
        }
        jsonschema.validate(v, schema)
        winner, scores, rationale, error = parse_verdict(json.dumps(v), CRITERIA)
        assert error is None and winner == v["winner"]
        assert scores == {s: {c: float(x) for c, x in d.items()} for s, d in v["scores"].items()}
        assert rationale == v["rationale"].strip()
