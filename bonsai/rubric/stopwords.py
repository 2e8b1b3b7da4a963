"""Small stop lists for the on_motion check: words (en) or character bigrams (ja, zh) that carry no topic.

Deliberately short: the check only needs the commonest function words out of the way, so that
"the" or "です" never counts as staying on the motion.
"""

from __future__ import annotations

_EN = """
a about above after again against all also am an and any are aren't as at be because been before being
below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during
each few for from further had hadn't has hasn't have haven't having he her here hers herself him himself his
how i if in into is isn't it it's its itself just let's me more most must mustn't my myself no nor not now of
off on once only or other ought our ours ourselves out over own same shall she should shouldn't so some such
than that that's the their theirs them themselves then there there's these they they're this those through
to too under until up very was wasn't we we're were weren't what what's when where which while who whom why
will with won't would wouldn't you you're your yours yourself yourselves yes one two also many much may might
like well even still thus hence however therefore indeed really very make makes made get gets got say says
said think thinks argue argues argument arguments point points side sides motion house believes believe
team opponent opponents debate first second finally speech
"""

# common grammatical bigrams (the all-hiragana ones are dropped anyway)
_JA = """
です ます した する して ある いる ない こと もの ため よう これ それ あれ この その あの ので から まで
私た 我々 思い 考え 的な 的に 主張 反論 相手 論題 賛成 反対 立場 意見
"""

_ZH = """
的 了 是 在 和 与 也 都 就 而 及 或 但 我 你 他 她 它 们 这 那 有 不 没 很 为 对 把 被 让 给 从 到 上 下 中
我们 你们 他们 她们 它们 这个 那个 这些 那些 因为 所以 但是 可以 没有 一个 不是 就是 还是 如果 虽然 而且
什么 怎么 非常 已经 应该 需要 觉得 认为 我方 对方 辩题 观点 论点 反对 支持
"""

STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(_EN.split()),
    "ja": frozenset(_JA.split()),
    "zh": frozenset(_ZH.split()),
}
