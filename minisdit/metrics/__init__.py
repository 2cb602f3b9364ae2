"""Evaluation metrics: FID (LeNet and Inception features), the classifier Inception Score, energy.

- ``frechet_distance``, ``FeatureStatistics``, ``fid_from_features``  (fid.py)
- ``inception_score``                                                (inception_score.py)
- ``LeNet``, ``load_lenet``, ``lenet_outputs``, ``reference_statistics`` (lenet.py)
- ``InceptionV3``, ``load_inception``, ``inception_features``        (inception.py)
- ``estimate_energy``                                                (energy.py)
- ``background_speckle``: gray dots in a sample's black background   (speckle.py)
- pooling and cross-entropy with hand-written backward               (layers.py)
- the restricted TorchScript-archive reader                          (torch_archive.py)
"""
from .energy import ENERGY_PER_AC_PJ, ENERGY_PER_MAC_PJ, EnergyReport, conv2d_macs, estimate_energy, linear_macs
from .fid import FeatureStatistics, fid_from_features, frechet_distance
from .inception import InceptionV3, inception_features, load_inception
from .inception_score import inception_score
from .layers import avg_pool2d, cross_entropy, max_pool2d, softmax
from .lenet import LeNet, lenet_features, lenet_outputs, lenet_probabilities, load_lenet, reference_statistics
from .speckle import background_speckle

__all__ = [
    "frechet_distance", "FeatureStatistics", "fid_from_features", "inception_score",
    "LeNet", "load_lenet", "lenet_outputs", "lenet_features", "lenet_probabilities", "reference_statistics",
    "InceptionV3", "load_inception", "inception_features",
    "estimate_energy", "EnergyReport", "linear_macs", "conv2d_macs", "ENERGY_PER_AC_PJ", "ENERGY_PER_MAC_PJ",
    "max_pool2d", "avg_pool2d", "cross_entropy", "softmax", "background_speckle",
]
