"""spider: learning to rank pre-trained models (Model Spider, NeurIPS 2023)."""

from spider.errors import SpiderError

__version__ = "0.1.0"
__all__ = ["SpiderError", "__version__"]
