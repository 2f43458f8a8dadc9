"""Search strategies over the one SearchSpace encoding, the study store and Pareto utilities."""

from bitnas.searchers.base import Evaluation, Objective, Searcher, Study, run_search
from bitnas.searchers.bo import BoSearcher
from bitnas.searchers.edmips import EdmipsSearcher
from bitnas.searchers.evolution import EvolutionSearcher
from bitnas.searchers.linas import LinasSearcher
from bitnas.searchers.nsga2 import Nsga2Searcher
from bitnas.searchers.pareto import hypervolume, knee_point, non_dominated
from bitnas.searchers.random_search import RandomSearcher

SEARCHERS = {
    "random": RandomSearcher,
    "nsga2": Nsga2Searcher,
    "evolution": EvolutionSearcher,
    "linas": LinasSearcher,
    "bo": BoSearcher,
    "edmips": EdmipsSearcher,
}

# searchers that train on the supernet and need ``supernet=``, ``data=`` (and ``lut=``) when built
NEEDS_SUPERNET = frozenset({"edmips"})

__all__ = ["NEEDS_SUPERNET", "SEARCHERS", "BoSearcher", "EdmipsSearcher", "Evaluation", "EvolutionSearcher",
           "LinasSearcher", "Nsga2Searcher", "Objective", "RandomSearcher", "Searcher", "Study", "hypervolume",
           "knee_point", "non_dominated", "run_search"]
