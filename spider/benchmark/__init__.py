"""Benchmark of a built zoo: the library behind ``experiments/<recipe>/report.py``.

* :mod:`~spider.benchmark.inputs` - the built zoo (validation and test targets, ground truth) and
  resumable JSON caches of the work folder.
* :mod:`~spider.benchmark.timing` - extraction time of every model on every target.
* :mod:`~spider.benchmark.forward` - forward baselines run on whole targets (scores, seconds).
* :mod:`~spider.benchmark.lgc_rows` - LGC (needs the PTMs, per-sample gradients) on whole targets, and its row.
* :mod:`~spider.benchmark.training` - Model Spider fits for the report and ranking of the targets.
* :mod:`~spider.benchmark.transfergraph` - TransferGraph fitted on the fine-tuning bank, chosen on validation.
* :mod:`~spider.benchmark.methods` - one result row per method, scored by :func:`spider.evaluate.evaluate`.
* :mod:`~spider.benchmark.costs` - build costs (fine-tuning bank included) and the bank's protocol agreement.
* :mod:`~spider.benchmark.goals` - the quality goals, decided from test numbers.
* :mod:`~spider.benchmark.leave_one_out` - adding a PTM without retraining: means of ``incremental.json``.
* :mod:`~spider.benchmark.charts` and :mod:`~spider.benchmark.markdown` - figures and tables.
"""
