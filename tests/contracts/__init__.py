"""Conformance tests that every implementation of a contract inherits.

As in GPyTorch's ``linear_operator`` (``LinearOperatorTestCase``): a base class holds the whole
battery, and an implementation's test class subclasses it and supplies a couple of factories.

* :class:`~tests.contracts.solver.SolverContract`: top-k symmetric / Hermitian eigensolvers
  (``make_matrix`` and ``solve``); see ``tests/test_contract_solvers.py``.
* :class:`~tests.contracts.mechanism.MechanismContract`: Gaussian mechanisms and their noise
  shapes (``make_mechanism`` and ``perturb``); see ``tests/test_contract_mechanisms.py``.

The base classes are not named ``Test...``, so pytest collects them only through a subclass.
"""

from .mechanism import MechanismContract
from .solver import SolverContract

__all__ = ["MechanismContract", "SolverContract"]
