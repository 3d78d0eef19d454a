"""The data sets of the book, all offline: the exact Gaussian-mixture oracle, 2-D toy sets, digits, and
procedural captioned shapes (``tinydiff.data.shapes``)."""

from . import shapes
from . import relight  # lesson 10: the linear light-transport world (td.data.relight)
from .digits import load_digits, load_mnist
from .mixture import GaussianMixture
from .toy import TOY_2D, toy_2d

__all__ = ["GaussianMixture", "toy_2d", "TOY_2D", "load_digits", "load_mnist", "shapes"]
