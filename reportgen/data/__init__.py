"""reportgen's data model: the typed records every stage passes on, with no torch in sight.

    examples  Example, Segment          an input as the readers give it
    results   TokenSpan, UnknownToken, Ablation, Result  what the engine computes for one input
    metrics   Metric, parse_metric, shares  how heads are scored for the grid
    methods   METHODS, Method           the saliency methods by name
    tasks     Task                      what a model computes (its objective)

Records, charts and the site import these; the engine (`reportgen.engine`, the one package
that imports torch) produces them.
"""

from reportgen.data.examples import Example, Segment
from reportgen.data.methods import METHODS, Method, parse_method
from reportgen.data.metrics import Metric, check_metric, parse_metric, shares
from reportgen.data.results import Ablation, HeadStats, Result, TokenSpan, UnknownToken
from reportgen.data.tasks import Task

__all__ = [
    "METHODS",
    "Ablation",
    "Example",
    "HeadStats",
    "Method",
    "Metric",
    "Result",
    "Segment",
    "Task",
    "TokenSpan",
    "UnknownToken",
    "check_metric",
    "parse_method",
    "parse_metric",
    "shares",
]
