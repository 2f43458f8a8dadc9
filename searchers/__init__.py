"""Search strategies over the one SearchSpace encoding, the study store and Pareto utilities."""

from bitnas.searchers.base import Evaluation, Objective, Searcher, Study, run_search
from bitnas.searchers.nsga2 import Nsga2Searcher
from bitnas.searchers.pareto import hypervolume, knee_point, non_dominated

SEARCHERS = {"nsga2": Nsga2Searcher}

__all__ = ["SEARCHERS", "Evaluation", "Nsga2Searcher", "Objective", "Searcher", "Study", "hypervolume",
           "knee_point", "non_dominated", "run_search"]
