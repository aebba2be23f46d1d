"""DANIA's light loss (dania.txt Sec. 3.5.1, Eq. 3-7), pure torch.

Every function takes images as B x 3 x H x W float tensors on the 0..1 intensity scale
(the caller converts from the segmenter's normalised range; values may leave [0, 1]).
``relit`` is the relighting net's output R; the input image I, the night batch I_tn and
the exposure level E are inputs or targets and are detached here, so every term sends
gradients into ``relit`` only.

Each ``1/N ||x||`` of the paper is read as a mean over the entries of x (Eq. 4 says so
for M, the pooled pixels), with batches averaged, so no term grows with the batch size
or the crop. The terms are computed in float32 whatever the input's dtype.

- `tv_loss`: Eq. 3, total variation of I - R;
- `exposure_loss` / `night_level`: Eq. 4 and its target E;
- `gram_matrix` / `style_loss`: Eq. 5;
- `ssim_loss`: Eq. 6;
- `LightWeights`, `light_terms`, `light_loss`: Eq. 7.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

#: Monodepth's SSIM constants for a data range of 1: (0.01 L)^2 and (0.03 L)^2
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def _images(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected B x C x H x W images, got shape {tuple(x.shape)}")
    return x


def _same_shape(image: torch.Tensor, relit: torch.Tensor, what: str) -> None:
    _images("image", image)
    _images("relit", relit)
    if image.shape != relit.shape:
        raise ValueError(f"{what}: image and relit shapes differ, "
                         f"{tuple(image.shape)} vs {tuple(relit.shape)}")


def tv_loss(image: torch.Tensor, relit: torch.Tensor) -> torch.Tensor:
    """L_tv (Eq. 3): ``1/N || (d_x D)^2 + (d_y D)^2 ||_1`` with ``D = I - R``.

    d_x, d_y: forward differences between horizontal / vertical neighbours, without
    padding (H x (W-1) and (H-1) x W of them), each squared and summed over the channels,
    so a pixel's term is the squared length of its RGB gradient. The L1 norm sums over
    all pixels and N = H * W, the number of pixels of one image I, as the paper says;
    images of a batch are averaged. (The authors' code, on the residual R - I, sums the
    channels too but divides each direction by its own count and doubles the sum: about
    twice this value.)
    """
    _same_shape(image, relit, "tv_loss")
    d = image.detach().float() - relit.float()
    b, _, h, w = d.shape
    dx = d[..., :, 1:] - d[..., :, :-1]
    dy = d[..., 1:, :] - d[..., :-1, :]
    return (dx.square().sum() + dy.square().sum()) / (b * h * w)


def night_level(night: torch.Tensor) -> torch.Tensor:
    """E of Eq. 4: "the average intensity value of the nighttime images in this training
    batch", the mean over images, channels and pixels of ``night``; a 0-d target, detached."""
    return _images("night", night).detach().float().mean()


def exposure_loss(relit: torch.Tensor, level: torch.Tensor | float,
                  patch: int = 32) -> torch.Tensor:
    """L_exp (Eq. 4, Zero-DCE's exposure control loss): ``1/M || phi(R) - E ||_1``.

    The intensity of a pixel is the mean of its 3 channels; phi is ``patch`` x ``patch``
    average pooling with stride ``patch`` (non-overlapping regions, as Zero-DCE), and a
    border narrower than a patch is left out (floor, as ``nn.AvgPool2d``). M: the pooled
    pixels, over the batch too, so the loss is the mean absolute difference to the level
    E (`night_level`, a scalar, detached). Zero-DCE and the authors' code square the
    difference; Eq. 4 prints an L1 norm, used here.
    """
    _images("relit", relit)
    if patch < 1:
        raise ValueError(f"exposure_loss: patch must be >= 1, got {patch}")
    if relit.shape[2] < patch or relit.shape[3] < patch:
        raise ValueError(f"exposure_loss: images of {relit.shape[2]}x{relit.shape[3]} are "
                         f"smaller than one {patch}x{patch} patch")
    pooled = F.avg_pool2d(relit.float().mean(dim=1, keepdim=True), patch)
    target = torch.as_tensor(level, dtype=pooled.dtype, device=pooled.device).detach()
    if target.numel() != 1:
        raise ValueError(f"exposure_loss: level must be a scalar, got shape "
                         f"{tuple(target.shape)}")
    return (pooled - target.reshape(())).abs().mean()


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """B x C x C Gram matrices ``F F^T / (C H W)``, F the C x HW features of each image
    (Johnson et al.'s normalisation, [69] of the paper): the entries are means over the
    pixels, so images of different sizes compare."""
    b, c, h, w = _images("x", x).shape
    f = x.float().reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def style_loss(relit: torch.Tensor, night: torch.Tensor) -> torch.Tensor:
    """L_style (Eq. 5): ``1/N || G_R - G_Itn ||^2``, squared Frobenius norm with N the C x C
    entries of a Gram matrix (a mean of squared differences), averaged over ``relit``'s
    images.

    The relit batch (source or day images) and the night batch are not paired and may
    differ in size, so each relit image's Gram matrix is compared with the mean Gram
    matrix of this batch's night images, the batch's night style (as E of Eq. 4 is the
    batch's mean night intensity). The night side is a target (detached). The authors'
    released code has no style term.
    """
    g_relit = gram_matrix(relit)
    g_night = gram_matrix(night.detach()).mean(dim=0, keepdim=True)
    if g_relit.shape[1:] != g_night.shape[1:]:
        raise ValueError(f"style_loss: relit has {g_relit.shape[1]} channels, night "
                         f"{g_night.shape[1]}")
    return (g_relit - g_night).square().mean()


def _ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel, per-channel simplified SSIM with a 3x3 block filter (Monodepth)."""
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    y = F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x = F.avg_pool2d(x, 3, 1)
    mu_y = F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x * mu_x
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y * mu_y
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    denominator = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return numerator / denominator


def ssim_loss(image: torch.Tensor, relit: torch.Tensor) -> torch.Tensor:
    """L_ssim (Eq. 6): ``1/(2N) || 1 - SSIM(I, R) ||_1``, the mean of (1 - SSIM) / 2 over
    images, channels and pixels.

    SSIM is the simplified one of Monodepth ([71], as the paper says): means, variances
    and covariance over 3x3 blocks (average pooling, stride 1) of the reflection-padded
    images, C1 = 0.01^2, C2 = 0.03^2 (data range 1). Images need sides >= 2 (reflection).
    As in Monodepth, (1 - SSIM) / 2 is clamped to [0, 1]: with exact block variances
    SSIM lies in [-1, 1] already (both factors do), so the clamp only catches rounding.
    """
    _same_shape(image, relit, "ssim_loss")
    if min(image.shape[2:]) < 2:
        raise ValueError(f"ssim_loss: images need sides >= 2, got {tuple(image.shape[2:])}")
    ssim = _ssim(image.detach().float(), relit.float())
    return ((1 - ssim) / 2).clamp(0, 1).mean()


@dataclass(frozen=True)
class LightWeights:
    """alpha_tv, alpha_exp, alpha_style, alpha_ssim of Eq. 7 (the paper's values)."""

    tv: float = 10.0
    exp: float = 1.0
    style: float = 10.0
    ssim: float = 1.0


def light_terms(image: torch.Tensor, relit: torch.Tensor, night: torch.Tensor,
                level: torch.Tensor | float, patch: int = 32) -> dict[str, torch.Tensor]:
    """The four unweighted terms of Eq. 7 for one domain's batch (I, R = L(I)), keyed
    ``tv``, ``exp``, ``style``, ``ssim``; ``night`` is this batch's night images (the
    style target) and ``level`` their `night_level`. Weight them with `light_loss`."""
    return {
        "tv": tv_loss(image, relit),
        "exp": exposure_loss(relit, level, patch),
        "style": style_loss(relit, night),
        "ssim": ssim_loss(image, relit),
    }


def light_loss(terms: dict[str, torch.Tensor], weights: LightWeights) -> torch.Tensor:
    """L_light (Eq. 7): the weighted sum of `light_terms`' terms (``LightWeights()``: the
    paper's alphas)."""
    missing = [f.name for f in fields(weights) if f.name not in terms]
    if missing:
        raise KeyError(f"light_loss: terms lack {missing}")
    return (weights.tv * terms["tv"] + weights.exp * terms["exp"]
            + weights.style * terms["style"] + weights.ssim * terms["ssim"])
