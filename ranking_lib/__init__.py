"""Deep Ranking fine-grained image similarity (Wang et al., CVPR 2014) on Tiny ImageNet."""

__version__ = "0.1.0"
