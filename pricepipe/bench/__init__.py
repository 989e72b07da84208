"""Benchmarks and the soak: tooling, not part of the runtime core.

This room sits above every role: it drives the roles (in-process or as
processes) to measure them, so it may import them; nothing imports it but
the ``pricepipe`` command, lazily (:mod:`.cli`).

* :mod:`.cli` - ``pricepipe bench TARGET`` and ``pricepipe soak``.
* :mod:`.report` - machine info, throwaway servers, the Markdown report.
* :mod:`.ratios` - ratios from interleaved (baseline, pricepipe) pairs:
  median, min-max, judged against the goals.
* One module per stage: :mod:`.publish`, :mod:`.persist`, :mod:`.ws`,
  :mod:`.api`, and :mod:`.e2e` (every role at once, a rising load).
* :mod:`.instructions` - instructions per event of the hot loops under
  callgrind: the figure for regressions that noise does not move.
* :mod:`.soak` - a steady load with faults, then the exactly-once checks.
* :mod:`.probe` - the websocket client that records what it receives.
* :mod:`.procstat` - CPU and memory of process trees, from ``/proc``.

Docs: ``docs/bench.md``.
"""
