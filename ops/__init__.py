"""Augmentation ops that run on whole batches where the batch lives.

One spec, three backends (``Compose(..., backend="kornia" | "dali" | "opencv")``, and the
default ``"auto"``: OpenCV for CPU batches, Kornia on a GPU); geometric ops fuse into one
warp. Mix ops (``MixUp``, ``CutMix``) run in torch after the backend and are passed to the
loader as ``mixup=``.
"""
from .base import GeometricOp, IntensityOp, Op, check_images
from .compose import Compose
from .geometric.affine_matrix import fuse_affine
from .geometric.flip import Flip
from .geometric.resized_crop import RandomResizedCrop
from .geometric.rotate import Rotate
from .geometric.shear import Shear
from .geometric.translate import Translate
from .intensity.brightness_contrast import BrightnessContrast
from .intensity.gaussian_noise import GaussianNoise
from .intensity.random_erasing import RandomErasing
from .mix.cutmix import CutMix
from .mix.mixup import MixUp
from .recipes import default_augment

__all__ = ["BrightnessContrast", "Compose", "CutMix", "Flip", "GaussianNoise", "GeometricOp", "IntensityOp",
           "MixUp", "Op", "RandomErasing", "RandomResizedCrop", "Rotate", "Shear", "Translate",
           "check_images", "default_augment", "fuse_affine"]
