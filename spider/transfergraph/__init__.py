"""TransferGraph (Li et al., "Model Selection with Model Zoo via Graph Learning"): a PTM ranker
learned from the zoo's fine-tuning history.

* :mod:`~spider.transfergraph.graph` - the graph learner (a two-type GraphSAGE on dense
  adjacencies) and the pair predictor.
* :mod:`~spider.transfergraph.model` - :func:`fit` on a fine-tuning bank, task tokens and PTM
  metadata; :meth:`TransferGraph.predict` for new tasks; :meth:`TransferGraph.save` / :func:`load`.
* :mod:`~spider.transfergraph.zoo` - those inputs read from a built zoo (``fit_zoo``).
* :mod:`~spider.transfergraph.cli` - ranking a folder of images, and ``spider transfergraph
  fit|rank``.

The graph learner is a GraphSAGE of our own on dense adjacencies rather than PyTorch Geometric's:
the graph holds tens of nodes, so a layer is a few exact matmuls, and the default install (and
CI) runs every test of it without an optional dependency or a second code path.
"""

from spider.transfergraph.model import FORMAT, HParams, PTMMeta, TransferGraph, fit, load

__all__ = ["FORMAT", "HParams", "PTMMeta", "TransferGraph", "fit", "load"]
