"""In-stream class balancing: ``ClassBalancer`` with SMOTE-family synthesizers."""
from .adasyn import ADASYN
from .borderline_smote import BorderlineSMOTE
from .class_balancer import ClassBalancer, NotFittedError
from .class_reservoir import ClassReservoir
from .neighbour_space import Encoder, RandomProjection, Thumbnail
from .random_oversampler import RandomOversampler
from .sampling_strategy import synthetic_targets
from .smote import SMOTE
from .synthesizer import Synthesizer

__all__ = ["ADASYN", "BorderlineSMOTE", "ClassBalancer", "ClassReservoir", "Encoder", "NotFittedError",
           "RandomOversampler", "RandomProjection", "SMOTE", "Synthesizer", "Thumbnail", "synthetic_targets"]
