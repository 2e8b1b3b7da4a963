"""Logic problems generated from a seed: arithmetic word problems, syllogisms and orderings, in en/ja/zh.

Each problem is drawn as a small language-free *spec* (numbers, a syllogism form and its terms, a
chain of pairwise facts), solved from the spec (syllogisms by checking every model of their three
terms, not by a table), then written out in a language. Its *canonical form* is what decides the
answer: an arithmetic problem's template and numbers (the names and items are decoration), a
syllogism's form and terms, an ordering's facts. The split is a hash of the canonical form, so a
problem and its translations, and any redraw of the same problem, land in the same split: no
held-out problem is ever trained on, whatever the seed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from bonsai.errors import ConfigError
from training.logic.answers import AnswerType, is_correct

Kind = Literal["arithmetic", "syllogism", "ordering"]
Lang = Literal["en", "ja", "zh"]
Split = Literal["train", "test"]

KINDS: tuple[Kind, ...] = ("arithmetic", "syllogism", "ordering")
LANGUAGES: tuple[Lang, ...] = ("en", "ja", "zh")
#: share of canonical forms held out; fixed, so every set ever generated agrees on the split
TEST_FRACTION = 0.2
#: bump when a change to the generator changes what a seed produces (recorded in training cards)
GENERATOR_VERSION = 1

NAMES: dict[Lang, tuple[str, ...]] = {
    "en": ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry"),
    "ja": ("太郎", "花子", "健太", "由美", "翔", "美咲", "大輔", "彩"),
    "zh": ("小明", "小红", "小华", "小刚", "小丽", "小强", "小芳", "小军"),
}

# --- answers as each language writes them -------------------------------------------------------

YES_NO: dict[Lang, dict[str, str]] = {"en": {"yes": "yes", "no": "no"}, "ja": {"yes": "はい", "no": "いいえ"}, "zh": {"yes": "是", "no": "否"}}

ASK: dict[AnswerType, dict[Lang, str]] = {
    "number": {"en": "Answer with a number.", "ja": "答えは数字で書いてください。", "zh": "请用数字回答。"},
    "yesno": {"en": "Answer yes or no.", "ja": "「はい」か「いいえ」で答えてください。", "zh": "请回答“是”或“否”。"},
    "name": {"en": "Answer with a name.", "ja": "名前で答えてください。", "zh": "请用名字回答。"},
}


@dataclass(frozen=True)
class Problem:
    kind: Kind
    lang: Lang
    question: str
    #: the answer as the language writes it ("9", "はい", "小明")
    answer: str
    answer_type: AnswerType
    #: what :func:`training.logic.answers.read_answer` returns for a right answer ("9", "yes", "小明")
    expected: str
    #: the candidates a name answer is read against (orderings)
    names: tuple[str, ...]
    canonical: str
    split: Split

    @property
    def id(self) -> str:
        return hashlib.sha256(f"{self.canonical}|{self.lang}".encode()).hexdigest()[:12]

    def check(self, text: str | None) -> bool:
        """Whether an extracted answer is right."""
        return is_correct(self.answer_type, self.expected, text, self.names)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self), "names": list(self.names)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Problem:
        fields = {k: v for k, v in data.items() if k != "id"}
        return Problem(**{**fields, "names": tuple(fields.get("names") or ())})


def split_of(canonical: str) -> Split:
    digest = hashlib.sha256(f"bonsai-logic-split|{canonical}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION else "train"


# --- arithmetic -----------------------------------------------------------------------------------

ITEMS: tuple[dict[Lang, tuple[str, str]], ...] = (
    {"en": ("apples", ""), "ja": ("りんご", "個"), "zh": ("苹果", "个")},
    {"en": ("pencils", ""), "ja": ("鉛筆", "本"), "zh": ("铅笔", "支")},
    {"en": ("books", ""), "ja": ("本", "冊"), "zh": ("书", "本")},
    {"en": ("stickers", ""), "ja": ("シール", "枚"), "zh": ("贴纸", "张")},
    {"en": ("marbles", ""), "ja": ("ビー玉", "個"), "zh": ("弹珠", "颗")},
)

ARITHMETIC: dict[str, dict[Lang, str]] = {
    # x + y - z
    "add_sub": {
        "en": "{a} has {x} {item}. {a} buys {y} more and then gives {z} to {b}. How many {item} does {a} have now?",
        "ja": "{a}さんは{item}を{x}{c}持っています。さらに{y}{c}買い、{b}さんに{z}{c}あげました。{a}さんは今{item}を何{c}持っていますか?",
        "zh": "{a}有{x}{c}{item}。{a}又买了{y}{c},然后给了{b}{z}{c}。{a}现在有多少{c}{item}?",
    },
    # x * y - z
    "boxes": {
        "en": "{a} buys {x} boxes of {item}. Each box holds {y} {item}. {a} gives {z} {item} to {b}. How many {item} does {a} have left?",
        "ja": "{a}さんは{item}を{x}箱買いました。1箱には{item}が{y}{c}入っています。{a}さんは{b}さんに{z}{c}あげました。{a}さんの{item}は何{c}残っていますか?",
        "zh": "{a}买了{x}盒{item},每盒有{y}{c}。{a}给了{b}{z}{c}。{a}还剩多少{c}{item}?",
    },
    # x / y
    "share": {
        "en": "{a} has {x} {item} and shares them equally among {y} friends. How many {item} does each friend get?",
        "ja": "{a}さんは{item}を{x}{c}持っていて、{y}人の友だちに同じ数ずつ分けます。1人あたり何{c}もらえますか?",
        "zh": "{a}有{x}{c}{item},平均分给{y}个朋友。每个朋友分到多少{c}?",
    },
    # x + (x + y)
    "together": {
        "en": "{a} has {x} {item}. {b} has {y} more {item} than {a}. How many {item} do they have together?",
        "ja": "{a}さんは{item}を{x}{c}持っています。{b}さんは{a}さんより{y}{c}多く持っています。2人合わせて何{c}持っていますか?",
        "zh": "{a}有{x}{c}{item}。{b}比{a}多{y}{c}。他们一共有多少{c}{item}?",
    },
}


def solve_arithmetic(template: str, nums: Sequence[int]) -> int:
    x, y, *rest = nums
    if template == "add_sub":
        return x + y - rest[0]
    if template == "boxes":
        return x * y - rest[0]
    if template == "share":
        if x % y:
            raise ValueError(f"{x} does not share equally among {y}")
        return x // y
    if template == "together":
        return x + x + y
    raise ValueError(f"unknown arithmetic template {template!r}")


def _draw_arithmetic(rng: random.Random) -> dict[str, Any]:
    template = rng.choice(sorted(ARITHMETIC))
    if template == "add_sub":
        x, y = rng.randint(2, 40), rng.randint(1, 30)
        nums = [x, y, rng.randint(1, x + y)]
    elif template == "boxes":
        x, y = rng.randint(2, 9), rng.randint(2, 12)
        nums = [x, y, rng.randint(1, x * y)]
    elif template == "share":
        y = rng.randint(2, 9)
        nums = [y * rng.randint(1, 12), y]
    else:
        nums = [rng.randint(1, 40), rng.randint(1, 20)]
    a, b = rng.sample(range(len(NAMES["en"])), 2)
    return {"kind": "arithmetic", "template": template, "nums": nums, "who": [a, b], "item": rng.randrange(len(ITEMS))}


def _write_arithmetic(spec: dict[str, Any], lang: Lang) -> tuple[str, str, str, tuple[str, ...]]:
    template, nums = spec["template"], spec["nums"]
    item, counter = ITEMS[spec["item"]][lang]
    a, b = (NAMES[lang][i] for i in spec["who"])
    values = dict(zip("xyz", nums, strict=False))
    question = ARITHMETIC[template][lang].format(a=a, b=b, item=item, c=counter, **values)
    answer = str(solve_arithmetic(template, nums))
    return f"{question} {ASK['number'][lang]}", answer, answer, ()


# --- syllogisms -----------------------------------------------------------------------------------

Statement = tuple[str, int, int]  # (all | some | no, subject term, predicate term)

#: (name, premises, conclusion); whether each is valid is computed by :func:`syllogism_valid`
FORMS: tuple[tuple[str, tuple[Statement, ...], Statement], ...] = (
    ("barbara", (("all", 0, 1), ("all", 1, 2)), ("all", 0, 2)),
    ("celarent", (("no", 1, 2), ("all", 0, 1)), ("no", 0, 2)),
    ("camestres", (("all", 0, 1), ("no", 2, 1)), ("no", 0, 2)),
    ("darii", (("all", 1, 2), ("some", 0, 1)), ("some", 0, 2)),
    ("datisi", (("all", 1, 2), ("some", 1, 0)), ("some", 0, 2)),
    ("converse", (("all", 0, 1), ("all", 1, 2)), ("all", 2, 0)),
    ("undistributed_middle", (("all", 0, 1), ("all", 2, 1)), ("all", 0, 2)),
    ("some_some", (("some", 0, 1), ("some", 1, 2)), ("some", 0, 2)),
    ("all_some", (("all", 0, 1), ("some", 1, 2)), ("some", 0, 2)),
    ("two_negatives", (("no", 0, 1), ("no", 1, 2)), ("no", 0, 2)),
    ("illicit_minor", (("all", 1, 2), ("all", 1, 0)), ("all", 0, 2)),
    ("shared_subject", (("all", 0, 1), ("all", 0, 2)), ("all", 1, 2)),
)

TERMS: dict[Lang, tuple[str, ...]] = {
    # invented words: the answer can only come from the premises, never from what is true of the world
    "en": ("wugs", "blickets", "daxes", "feps", "toves", "glorps", "zorbs", "kriks"),
    "ja": ("ワグ", "ブリケット", "ダックス", "フェップ", "トーヴ", "グロープ", "ゾーブ", "クリック"),
    "zh": ("乌格", "布利克", "达克斯", "费普", "托夫", "格洛普", "佐布", "克里克"),
}

_STATEMENT: dict[Lang, dict[str, str]] = {
    "en": {"all": "all {x} are {y}", "some": "some {x} are {y}", "no": "no {x} are {y}"},
    "ja": {"all": "すべての{x}は{y}である", "some": "いくつかの{x}は{y}である", "no": "どの{x}も{y}ではない"},
    "zh": {"all": "所有{x}都是{y}", "some": "有些{x}是{y}", "no": "没有{x}是{y}"},
}
_SYLLOGISM: dict[Lang, str] = {
    "en": "Assume these statements are true: {premises} Does it necessarily follow that {conclusion}?",
    "ja": "次の文が正しいとします。{premises}ここから「{conclusion}」と必ず言えますか?",
    "zh": "假设下面的说法都是真的:{premises}由此能否必然推出“{conclusion}”?",
}


def _holds(statement: Statement, regions: Sequence[int]) -> bool:
    """``statement`` in the model whose non-empty regions are ``regions`` (bit t set: inside term t)."""
    quantifier, x, y = statement
    if quantifier == "all":
        return not any(r >> x & 1 and not r >> y & 1 for r in regions)
    if quantifier == "some":
        return any(r >> x & 1 and r >> y & 1 for r in regions)
    return not any(r >> x & 1 and r >> y & 1 for r in regions)


def syllogism_valid(premises: Sequence[Statement], conclusion: Statement) -> bool:
    """True when the conclusion holds in every model of the premises (each of the 2^8 ways to leave
    the eight regions of three terms empty or not)."""
    for mask in range(256):
        regions = [r for r in range(8) if mask >> r & 1]
        if all(_holds(p, regions) for p in premises) and not _holds(conclusion, regions):
            return False
    return True


def _draw_syllogism(rng: random.Random) -> dict[str, Any]:
    valid = rng.random() < 0.5  # half yes, half no: a constant answer scores 50%, not more
    forms = [i for i, (_, premises, conclusion) in enumerate(FORMS) if syllogism_valid(premises, conclusion) == valid]
    return {"kind": "syllogism", "form": rng.choice(forms), "terms": rng.sample(range(len(TERMS["en"])), 3)}


def _say(statement: Statement, terms: Sequence[str], lang: Lang) -> str:
    quantifier, x, y = statement
    return _STATEMENT[lang][quantifier].format(x=terms[x], y=terms[y])


def _write_syllogism(spec: dict[str, Any], lang: Lang) -> tuple[str, str, str, tuple[str, ...]]:
    _, premises, conclusion = FORMS[spec["form"]]
    terms = [TERMS[lang][i] for i in spec["terms"]]
    said = [_say(p, terms, lang) for p in premises]
    premises_text = " ".join(s[0].upper() + s[1:] + "." for s in said) if lang == "en" else "".join(s + "。" for s in said)
    question = _SYLLOGISM[lang].format(premises=premises_text, conclusion=_say(conclusion, terms, lang))
    verdict = "yes" if syllogism_valid(premises, conclusion) else "no"
    return f"{question} {ASK['yesno'][lang]}", YES_NO[lang][verdict], verdict, ()


# --- orderings ------------------------------------------------------------------------------------

#: relation -> language -> (intro, "x above y", "y below x", ask max, ask min)
RELATIONS: dict[str, dict[Lang, tuple[str, str, str, str, str]]] = {
    "height": {
        "en": ("{n} friends: {people}.", "{x} is taller than {y}.", "{y} is shorter than {x}.", "Who is the tallest?", "Who is the shortest?"),
        "ja": ("{people}の{n}人がいます。", "{x}さんは{y}さんより背が高い。", "{y}さんは{x}さんより背が低い。", "一番背が高いのは誰ですか?", "一番背が低いのは誰ですか?"),
        "zh": ("有{n}个人:{people}。", "{x}比{y}高。", "{y}比{x}矮。", "谁最高?", "谁最矮?"),
    },
    "age": {
        "en": ("{n} friends: {people}.", "{x} is older than {y}.", "{y} is younger than {x}.", "Who is the oldest?", "Who is the youngest?"),
        "ja": ("{people}の{n}人がいます。", "{x}さんは{y}さんより年上です。", "{y}さんは{x}さんより年下です。", "一番年上なのは誰ですか?", "一番年下なのは誰ですか?"),
        "zh": ("有{n}个人:{people}。", "{x}比{y}年纪大。", "{y}比{x}年纪小。", "谁年纪最大?", "谁年纪最小?"),
    },
    "race": {
        "en": ("{n} runners: {people}.", "{x} finished before {y}.", "{y} finished after {x}.", "Who finished first?", "Who finished last?"),
        "ja": ("{people}の{n}人が走りました。", "{x}さんは{y}さんより先にゴールした。", "{y}さんは{x}さんより後にゴールした。", "最初にゴールしたのは誰ですか?", "最後にゴールしたのは誰ですか?"),
        "zh": ("{people}{n}个人赛跑。", "{x}比{y}先到终点。", "{y}比{x}后到终点。", "谁第一个到终点?", "谁最后到终点?"),
    },
}
_LIST_SEP: dict[Lang, str] = {"en": ", ", "ja": "、", "zh": "、"}


def solve_ordering(facts: Sequence[Sequence[int]], ask: str) -> int:
    """The one person above everyone (``max``) or below everyone (``min``) by the facts' transitive
    closure; refuses facts that leave it open."""
    people = {p for fact in facts for p in fact[:2]}
    above: dict[int, set[int]] = {p: set() for p in people}  # p -> everyone known to be below p
    for x, y, *_ in facts:
        above[x].add(y)
    changed = True
    while changed:
        changed = False
        for p in people:
            reach = set().union(*(above[q] for q in above[p])) | above[p]
            if reach != above[p]:
                above[p], changed = reach, True
    if ask == "max":
        found = [p for p in people if above[p] == people - {p}]
    else:
        found = [p for p in people if all(p in above[q] for q in people - {p})]
    if len(found) != 1:
        raise ValueError(f"the facts {facts} do not decide the {ask}")
    return found[0]


def _draw_ordering(rng: random.Random) -> dict[str, Any]:
    n = rng.randint(3, 5)
    order = rng.sample(range(len(NAMES["en"])), n)  # greatest first
    facts = [[order[i], order[i + 1], rng.randint(0, 1)] for i in range(n - 1)]  # [above, below, said from below]
    rng.shuffle(facts)
    people = sorted(order, key=lambda _: rng.random())
    return {"kind": "ordering", "relation": rng.choice(sorted(RELATIONS)), "ask": rng.choice(["max", "min"]), "facts": facts, "people": people}


def _write_ordering(spec: dict[str, Any], lang: Lang) -> tuple[str, str, str, tuple[str, ...]]:
    intro, above, below, ask_max, ask_min = RELATIONS[spec["relation"]][lang]
    names = tuple(NAMES[lang][i] for i in spec["people"])
    parts = [intro.format(n=len(names), people=_LIST_SEP[lang].join(names))]
    for x, y, flipped in spec["facts"]:
        parts.append((below if flipped else above).format(x=NAMES[lang][x], y=NAMES[lang][y]))
    parts.append(ask_max if spec["ask"] == "max" else ask_min)
    answer = NAMES[lang][solve_ordering(spec["facts"], spec["ask"])]
    sep = " " if lang == "en" else ""
    return f"{sep.join(parts)} {ASK['name'][lang]}", answer, answer, names


# --- drawing sets ---------------------------------------------------------------------------------

_DRAW: dict[Kind, Callable[[random.Random], dict[str, Any]]] = {"arithmetic": _draw_arithmetic, "syllogism": _draw_syllogism, "ordering": _draw_ordering}
_WRITE: dict[Kind, Callable[[dict[str, Any], Lang], tuple[str, str, str, tuple[str, ...]]]] = {
    "arithmetic": _write_arithmetic,
    "syllogism": _write_syllogism,
    "ordering": _write_ordering,
}
#: the spec keys that decide the answer (the rest is how it is told)
_DECIDES: dict[Kind, tuple[str, ...]] = {
    "arithmetic": ("kind", "template", "nums"),
    "syllogism": ("kind", "form", "terms"),
    "ordering": ("kind", "relation", "ask", "facts"),
}


_ANSWER_TYPE: dict[Kind, AnswerType] = {"arithmetic": "number", "syllogism": "yesno", "ordering": "name"}


def canonical_form(spec: dict[str, Any]) -> str:
    decides = {k: spec[k] for k in _DECIDES[spec["kind"]]}
    if spec["kind"] == "ordering":
        # which way round a fact is said, and in which order the facts come, is wording
        decides["facts"] = sorted([x, y] for x, y, *_ in spec["facts"])
    return json.dumps(decides, sort_keys=True, separators=(",", ":"))


def problem_from_spec(spec: dict[str, Any], lang: Lang) -> Problem:
    question, answer, expected, names = _WRITE[spec["kind"]](spec, lang)
    canonical = canonical_form(spec)
    return Problem(spec["kind"], lang, question, answer, _ANSWER_TYPE[spec["kind"]], expected, names, canonical, split_of(canonical))



def parse_choices(text: str | Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``"en,ja"`` -> ("en", "ja"), each checked against ``allowed`` and named once."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s).strip() for s in text]
    items = [s for s in items if s]
    bad = [s for s in items if s not in allowed]
    if not items or bad:
        raise ConfigError(f"{what}: {', '.join(bad) if bad else 'none given'} {'is' if len(bad) == 1 else 'are'} not allowed" if bad else f"{what}: none given", f"choose from {', '.join(allowed)}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{what}: a value is named twice in {','.join(items)}", "name each once")
    return tuple(items)


def generate(
    n: int,
    *,
    seed: int = 0,
    split: Split = "train",
    languages: Sequence[str] = LANGUAGES,
    kinds: Sequence[str] = KINDS,
) -> list[Problem]:
    """``n`` distinct problems of ``split``, kinds and languages taking turns; the same for the same arguments."""
    if n < 1:
        raise ConfigError(f"the number of logic problems must be at least 1, not {n}")
    languages = parse_choices(languages, LANGUAGES, "languages")
    kinds = parse_choices(kinds, KINDS, "problem kinds")
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r}", "use train or test")
    rng = random.Random(f"bonsai-logic|{GENERATOR_VERSION}|{seed}")  # str seeds hash the same in every process
    combos = list(itertools.product(kinds, languages))
    seen: set[tuple[str, str]] = set()
    out: list[Problem] = []
    for i in range(n):
        kind, lang = combos[i % len(combos)]
        for _ in range(2000):
            spec = _DRAW[kind](rng)  # type: ignore[index]
            canonical = canonical_form(spec)
            if split_of(canonical) == split and (canonical, lang) not in seen:
                break
        else:
            raise ConfigError(f"ran out of distinct {kind} problems in {lang} after {len(out)}", "ask for fewer problems")
        seen.add((canonical, lang))
        out.append(problem_from_spec(spec, lang))  # type: ignore[arg-type]
    return out
