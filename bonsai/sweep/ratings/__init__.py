"""Ratings for a sweep: Bradley-Terry strengths with bootstrap intervals, side bias, head-to-head rates.

A sweep gives a few hundred noisy pairwise outcomes at best, so every number here comes with its
uncertainty: ratings with a percentile bootstrap over debates, the side-A win rate with a Wilson
interval. A tie counts as half a win for each side, as Chatbot Arena counts them: in the
Bradley-Terry fit (half a game won each way), in every win rate and in the side bias. The fit carries a weak prior (a few virtual drawn games against an average opponent) because
small sweeps routinely contain a competitor that won or lost everything, whose plain maximum-likelihood
strength is infinite.

One module a job: ``outcome`` (one finished debate), ``statistics`` (the Bradley-Terry fit and its
bootstrap), ``report`` (everything the sweep reports, and its table), ``plots`` and ``files`` (the
report's files on disk).
"""
