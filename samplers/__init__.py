"""In-stream class balancing: ``ClassBalancer`` with SMOTE-family synthesizers."""
from .adasyn import ADASYN
from .borderline_smote import BorderlineSMOTE
from .class_balancer import ClassBalancer
from .class_reservoir import ClassReservoir
from .sampling_strategy import synthetic_targets
from .smote import SMOTE, RandomOversampler, Synthesizer

__all__ = ["ADASYN", "BorderlineSMOTE", "ClassBalancer", "ClassReservoir", "RandomOversampler", "SMOTE",
           "Synthesizer", "synthetic_targets"]
