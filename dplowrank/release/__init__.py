"""The release: the value object, its file format, and the pipeline that makes one."""

from ._format import MECHANISMS
from ._pipeline import _package as package_release
from ._pipeline import release_rank_k
from ._result import LowRankRelease, load_release

__all__ = ["MECHANISMS", "LowRankRelease", "load_release", "package_release", "release_rank_k"]
