"""Scorer modules (LightningModules ranking a model zoo for a task) and their registry.

Importing this package registers the built-in scorers ``token`` (:class:`TokenScorer`) and
``reranker`` (:class:`ReRanker`) and the built-in ranking losses.
"""

from spider.modules._checks import ScorerInputError
from spider.modules.losses import get_loss, list_losses, register_loss
from spider.modules.scorer_registry import (
    CHECKPOINT_KEY,
    SCORERS,
    create_scorer,
    get_scorer,
    list_scorers,
    load_scorer,
    register_scorer,
)
from spider.modules.token_scorer import TokenScorer
from spider.modules.reranker import (  # noqa: I001  (after TokenScorer)
    FORWARD_RERANK_WEIGHT,
    NOVEL_RERANK_WEIGHT,
    RerankResult,
    ReRanker,
    ReRanking,
    forward_rerank,
)

__all__ = [
    "CHECKPOINT_KEY",
    "FORWARD_RERANK_WEIGHT",
    "NOVEL_RERANK_WEIGHT",
    "SCORERS",
    "ReRanker",
    "ReRanking",
    "RerankResult",
    "ScorerInputError",
    "TokenScorer",
    "create_scorer",
    "forward_rerank",
    "get_loss",
    "get_scorer",
    "list_losses",
    "list_scorers",
    "load_scorer",
    "register_loss",
    "register_scorer",
]
