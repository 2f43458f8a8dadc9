"""Search strategies over the one SearchSpace encoding, the study store and Pareto utilities.

Every searcher registers in ``bitnas.api.SEARCHERS``; one that trains on the supernet (EdMIPS) sets
``needs_supernet`` and is built with ``supernet=``, ``data=``, ``lut=`` and ``reduce_range=``.
"""

from bitnas.api import SEARCHERS
from bitnas.searchers.base import Evaluation, Objective, Searcher, Study, run_search
from bitnas.searchers.bo import BoSearcher
from bitnas.searchers.edmips import EdmipsSearcher
from bitnas.searchers.evolution import EvolutionSearcher
from bitnas.searchers.executor import Executor, InProcessExecutor, PoolExecutor, RayExecutor, make_executor
from bitnas.searchers.linas import LinasSearcher
from bitnas.searchers.nsga2 import Nsga2Searcher
from bitnas.searchers.pareto import hypervolume, knee_point, non_dominated
from bitnas.searchers.qfa import QfaSearcher
from bitnas.searchers.random_search import RandomSearcher

for _name, _cls in (("random", RandomSearcher), ("nsga2", Nsga2Searcher), ("evolution", EvolutionSearcher),
                    ("linas", LinasSearcher), ("bo", BoSearcher), ("edmips", EdmipsSearcher), ("qfa", QfaSearcher)):
    SEARCHERS.register(_name, _cls)

__all__ = ["SEARCHERS", "BoSearcher", "EdmipsSearcher", "Evaluation", "EvolutionSearcher", "Executor",
           "InProcessExecutor", "LinasSearcher", "Nsga2Searcher", "Objective", "PoolExecutor", "QfaSearcher", "RandomSearcher",
           "RayExecutor", "Searcher", "Study", "hypervolume", "knee_point", "make_executor", "non_dominated",
           "run_search"]
