"""odearch: deep residual networks as numerical discretisations of ODEs (Lu, Zhong, Li, Dong, ICML 2018)."""

__version__ = "0.1.0"
