"""Evaluation: FID / KID on image features, NLL in bits per dimension, PSNR, prompt accuracy.

* :func:`frechet_distance` — FID from two (mean, covariance) pairs, as pytorch-fid computes it.
* :class:`FeatureStatistics` — streaming float64 mean / covariance; pytorch-fid ``.npz`` files.
* :func:`compute_statistics`, :func:`statistics_from_folder`, :func:`statistics_from_sampler`
  — feed a DataLoader / tensor, a folder of images, or a sampler generating on the fly.
* :class:`FIDInceptionV3` — the TensorFlow FID InceptionV3 (2048-d pool features); weights from
  a local ``pt_inception-2015-12-05-6726825d.pth`` (:func:`load_fid_inception`).
* :func:`kernel_inception_distance` — KID, unbiased at small sample counts.
* :func:`nll_bits_per_dim` — the full variational bound over a dataset with a per-term breakdown.
* :func:`psnr` — peak signal-to-noise ratio of reconstructions, per image in dB.
* :func:`prompt_accuracy`, :func:`detect_shape_attributes` — prompt adherence of text-to-image
  samples of the captioned shapes, read from the pixels.
"""

from .features import (
    ImageFolder,
    compute_statistics,
    generate_samples,
    list_images,
    quantize,
    statistics_from_folder,
    statistics_from_sampler,
)
from .fid import (
    RECOMMENDED_MIN_SAMPLES,
    FeatureStatistics,
    KernelDistance,
    frechet_distance,
    kernel_inception_distance,
)
from .inception import (
    WEIGHTS_ENV,
    WEIGHTS_FILENAME,
    WEIGHTS_URL,
    FIDInceptionV3,
    find_fid_weights,
    load_fid_inception,
)
from .nll import BitsPerDim, nll_bits_per_dim
from .reconstruction import psnr
from .prompt import (
    PromptEvaluation,
    attribute_accuracy,
    detect_shape_attributes,
    evaluate_prompt_accuracy,
    prompt_accuracy,
)

__all__ = [
    "RECOMMENDED_MIN_SAMPLES",
    "WEIGHTS_ENV",
    "WEIGHTS_FILENAME",
    "WEIGHTS_URL",
    "PromptEvaluation",
    "attribute_accuracy",
    "evaluate_prompt_accuracy",
    "detect_shape_attributes",
    "prompt_accuracy",
    "psnr",
    "BitsPerDim",
    "FIDInceptionV3",
    "FeatureStatistics",
    "ImageFolder",
    "KernelDistance",
    "compute_statistics",
    "find_fid_weights",
    "frechet_distance",
    "generate_samples",
    "kernel_inception_distance",
    "list_images",
    "load_fid_inception",
    "nll_bits_per_dim",
    "quantize",
    "statistics_from_folder",
    "statistics_from_sampler",
]
