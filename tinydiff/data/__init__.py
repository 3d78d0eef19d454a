"""The data sets of the book, all offline: the exact Gaussian-mixture oracle, 2-D toy sets, digits, procedural
captioned shapes (``tinydiff.data.shapes``) and the linear light-transport world of lesson 10 (``tinydiff.data.relight``)."""

from . import relight, shapes
from .digits import load_digits, load_mnist
from .mixture import GaussianMixture
from .toy import TOY_2D, toy_2d

__all__ = ["GaussianMixture", "toy_2d", "TOY_2D", "load_digits", "load_mnist", "shapes", "relight"]
