"""Losses and class weights shared by the UDA methods (pure torch/numpy).

- `mean_l1`: the ||a - b||_1 terms of the translation methods, as a mean absolute error;
- `symmetric_cross_entropy`: the semantically-adaptive I2I paper's L_SCE (Eq. 5);
- `confidence_mask` / `confidence_masked_mse`: domain extension's mean-teacher
  consistency loss (domain-extension.txt Eq. 14-15);
- `class_frequency_weights`: DANIA's re-weighting (dania.txt Eq. 1-2, used in Eq. 8
  and on predictions);
- `median_frequency_weights`: median frequency balancing (Eigen & Fergus 2015, SegNet);
- `class_frequencies`: the label statistics both weightings start from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgeseg.errors import EdgesegError

FrequencyLike = Sequence[float] | np.ndarray | torch.Tensor


def mean_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b||_1 as a mean absolute error, in fp32 under AMP: CycleGAN's normalisation of
    its L1 terms, which the papers' norms (cycle, reconstruction, distillation, latent and
    mutual-information terms) are read as."""
    return F.l1_loss(a.float(), b.float())


def symmetric_cross_entropy(logits_original: torch.Tensor,
                            logits_translated: torch.Tensor) -> torch.Tensor:
    """L_SCE of one direction (semantically-adaptive-i2i.txt Sec. 3.1, Eq. 5), from logits:

        - E[ M(x_t) . log M(x) ] - E[ M(x) . log M(x_t) ]

    with ``M(x) = softmax(logits_original)``, ``M(x_t) = softmax(logits_translated)``
    (x_t = x translated to the other domain), the dot a sum over classes and E the
    mean over samples and pixels.

    Gradients: the paper says each term "assumes that [one prediction] is the ground
    truth label and tries to align [the other] with it", so each term's label side is
    detached: the first term reaches only ``logits_original`` (towards the
    translation's prediction), the second only ``logits_translated`` (towards the
    original's). (The paper's text names M(x_S) as the aligned side of both terms; Eq. 5
    makes the second one M(x_S->T).) While M is frozen, the translator therefore
    learns from the second term only. Use `logits_translated` of the T->S translation
    with ``logits_original`` of x_T for L_SCE^T.
    """
    if logits_original.shape != logits_translated.shape:
        raise ValueError(f"symmetric_cross_entropy: shapes differ, "
                         f"{tuple(logits_original.shape)} vs {tuple(logits_translated.shape)}")
    log_p = F.log_softmax(logits_original.float(), dim=1)
    log_q = F.log_softmax(logits_translated.float(), dim=1)
    aligns_original = -(log_q.exp().detach() * log_p).sum(dim=1).mean()
    aligns_translated = -(log_p.exp().detach() * log_q).sum(dim=1).mean()
    return aligns_original + aligns_translated


def confidence_mask(teacher_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eq. 14 of domain-extension.txt: 1 where the teacher's top softmax probability is
    >= ``threshold`` (rho), else 0; shape (N, 1, ...) of float, no gradient."""
    with torch.no_grad():
        top = F.softmax(teacher_logits.float(), dim=1).amax(dim=1, keepdim=True)
        return (top >= threshold).float()


def confidence_masked_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                          threshold: float) -> torch.Tensor:
    """One term of L_ssl (domain-extension.txt Sec. 3.3, Eq. 15):
    ``|| w * (softmax(teacher) - softmax(student)) ||^2``, w = `confidence_mask`.

    Masked: whole pixels, by the teacher's own confidence (Eq. 14), in every class
    channel. The mask and the target are computed from the same teacher prediction
    (Eq. 15 writes the mask on f_T(x_t) while the teacher only sees A_w(x_t), Fig. 2).
    The teacher gets no gradient ("only propagated into the student network").

    Mean: the squared norm is divided by the number of elements N * C * H * W, masked
    ones included (the mean squared error of Mean Teacher, which the paper cites, with
    masked elements at zero). A constant divisor keeps the loss exactly proportional
    to Eq. 15; dividing by the confident pixels only would rescale it as the
    threshold ramps (0.5 -> 0.9 in Sec. 4.2) and give one confident pixel the weight
    of a whole batch. The paper's lambda_ssl of 50 -> 100 fits a mean ("the total
    SSL loss is generally quite small"), not a sum over pixels.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"confidence_masked_mse: shapes differ, "
                         f"{tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    student = F.softmax(student_logits.float(), dim=1)
    teacher = F.softmax(teacher_logits.float(), dim=1).detach()
    mask = confidence_mask(teacher_logits, threshold)
    return (mask * (teacher - student).square()).mean()


def _frequencies(frequencies: FrequencyLike) -> np.ndarray:
    if isinstance(frequencies, torch.Tensor):
        frequencies = frequencies.detach().cpu().numpy()
    freq = np.asarray(frequencies, dtype=np.float64)
    if freq.ndim != 1 or freq.size == 0:
        raise ValueError(f"class frequencies must be a non-empty 1-D array, got shape {freq.shape}")
    if not np.all(np.isfinite(freq)) or np.any(freq < 0):
        raise ValueError(f"class frequencies must be finite and >= 0, got {freq.tolist()}")
    if np.count_nonzero(freq) < 2:
        raise ValueError(f"class frequencies {freq.tolist()}: need at least two classes "
                         "with pixels to weight them against each other")
    return freq


def class_frequency_weights(frequencies: FrequencyLike, std: float = 0.1,
                            avg: float = 1.0) -> torch.Tensor:
    """DANIA's class weights (dania.txt Sec. 3.3, Eq. 1-2):

        w'_k = -log(a_k),   w_k = (w'_k - mean(w')) / sigma(w') * std + avg

    ``a_k``: the share of the source's valid pixels labelled k (`class_frequencies`);
    counts give the same weights (a common scale of a_k shifts every w'_k equally).
    std 0.1 and avg 1.0 are the paper's training values (it evaluates with std 0.14).

    sigma is the sample standard deviation (n - 1), as in the authors' released code
    (``torch.std``); the paper just says "standard deviation".

    A class with no pixels (a_k = 0, -log a_k infinite) is left out of mean and sigma
    and gets ``avg``, the neutral weight: the data say nothing about it, and a
    finite, typical weight keeps its channel from being zeroed or blown up where the
    weights multiply predictions (Sec. 3.3); in a cross-entropy it is never a target.
    If all classes with pixels have the same frequency, every weight is ``avg``.
    Returns float32 weights, one per class.
    """
    freq = _frequencies(frequencies)
    present = freq > 0
    w0 = -np.log(freq[present])
    sigma = float(np.std(w0, ddof=1))
    weights = np.full(freq.shape, float(avg))
    if sigma > 0:
        weights[present] = (w0 - w0.mean()) / sigma * std + avg
    return torch.from_numpy(weights.astype(np.float32))


def median_frequency_weights(frequencies: FrequencyLike) -> torch.Tensor:
    """Median frequency balancing (Eigen & Fergus 2015, used by SegNet):
    ``w_k = median(freq) / freq_k``.

    SegNet's ``freq_k`` is class k's pixels divided by the pixels of the images where k
    is present: pass ``class_frequencies(..., per_present_image=True)`` for exactly that
    (plain shares of all pixels give the variant most code uses). The median is over the
    classes with pixels (numpy's: the mean of the two middle values for an even count).
    A class with no pixels gets 1.0, the weight of a class at the median, for the reason
    given in `class_frequency_weights`. Returns float32 weights, one per class.
    """
    freq = _frequencies(frequencies)
    present = freq > 0
    weights = np.ones(freq.shape)
    weights[present] = np.median(freq[present]) / freq[present]
    return torch.from_numpy(weights.astype(np.float32))


def _sample_indices(length: int, max_images: int | None) -> np.ndarray:
    if max_images is None or max_images >= length:
        return np.arange(length)
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    return np.unique(np.linspace(0, length - 1, max_images).round().astype(np.int64))


def class_frequencies(dataset: Any, num_classes: int, ignore_index: int = 255,
                      max_images: int | None = None,
                      per_present_image: bool = False) -> np.ndarray:
    """Per-class label frequencies of a reader (``dataset[i]["label"]``: H x W class ids).

    Default: class k's share of all valid (not ``ignore_index``) pixels, DANIA's a_k.
    ``per_present_image``: class k's pixels over the valid pixels of the images that
    contain k, SegNet's freq(k). A class never seen gets 0 in both.

    ``max_images`` reads that many images spread evenly over the dataset (first and
    last included) rather than the first ones: readers list frames in recording order,
    so a prefix would be one street. A label id outside [0, num_classes) other than
    ``ignore_index`` is an error (a label space that does not match ``num_classes``).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for index in _sample_indices(len(dataset), max_images):
        sample = dataset[int(index)]
        label = sample.get("label")
        if label is None:
            raise EdgesegError(f"class frequencies: sample {sample.get('name', index)!r} has "
                               "no label; count a labelled split")
        ids = np.asarray(label).astype(np.int64, copy=False).ravel()
        ids = ids[ids != ignore_index]
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            bad = sorted(set(ids[(ids < 0) | (ids >= num_classes)].tolist()))[:5]
            raise EdgesegError(f"class frequencies: sample {sample.get('name', index)!r} has "
                               f"label ids {bad} outside 0..{num_classes - 1} (not "
                               f"{ignore_index}); wrong num_classes or label space?")
        counts = np.bincount(ids, minlength=num_classes)
        pixels += counts
        image_pixels[counts > 0] += ids.size
    if per_present_image:
        denominator = image_pixels
    else:
        denominator = np.full(num_classes, pixels.sum())
    return np.divide(pixels, denominator, out=np.zeros(num_classes),
                     where=denominator > 0)
