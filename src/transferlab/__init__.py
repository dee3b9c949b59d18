"""transferlab: which ImageNet-pretrained ConvNet and transfer strategy works best on your images."""
__version__ = "0.1.0"
