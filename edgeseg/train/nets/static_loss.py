"""DANIA's static loss (dania.txt Sec. 3.5.3, Eq. 9-13) and the warp of Eq. 9, pure torch.

The night frame's pseudo-label comes from its day counterpart: the day prediction is
warped onto the night frame (`warp_with_homography`, Eq. 9 with a homography as the
flow), fused with the night prediction (`fuse_day_night`, Eq. 10-11), re-weighted by the
class weights w_k of Eq. 2 (`edgeseg.train.nets.losses.class_frequency_weights`) and
argmaxed over the static classes (`static_pseudo_label`). `static_focal_loss` (Eq. 12-13)
then trains the night prediction's static channels on it, a pixel's label counting in
its 3x3 neighbourhood. `static_class_ids` says which classes are static.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from edgeseg.labels import IGNORE_INDEX, LabelSpace

#: Cityscapes' static classes, trainIds 0-10 (the paper's list in Sec. 3.5.3 plus building,
#: as the authors' code slices them): stuff and fixed objects, no people or vehicles
CITYSCAPES_STATIC = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                     "traffic sign", "vegetation", "terrain", "sky")
#: class names of other label spaces that mean a Cityscapes static class (CamVid's)
STATIC_ALIASES = {"tree": "vegetation", "sign": "traffic sign"}

#: how far (pixels) outside the day image a sampled point may lie and still be valid:
#: a homography through float rounding should not drop the border
_EDGE_TOLERANCE = 1e-3


def static_class_ids(label_space: LabelSpace) -> list[int]:
    """The class ids of ``label_space`` that are static, by name: a class is static if its
    name, or the Cityscapes class it is an alias of (`STATIC_ALIASES`: CamVid's tree and
    sign), is one of `CITYSCAPES_STATIC`. One rule for every space: Cityscapes-19 gives
    trainIds 0-10 as the authors' code, CamVid-11 all but car, pedestrian and bicyclist,
    the SYNTHIA subsets the static Cityscapes classes they keep."""
    ids = [i for i, name in enumerate(label_space.names)
           if STATIC_ALIASES.get(name, name) in CITYSCAPES_STATIC]
    if not ids:
        raise ValueError(f"label space {label_space.name!r} has no static class "
                         f"(none of {list(CITYSCAPES_STATIC)} or {sorted(STATIC_ALIASES)})")
    return ids


def _static_index(static_ids: Sequence[int], num_classes: int, device: torch.device
                  ) -> torch.Tensor:
    ids = [int(i) for i in static_ids]
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= num_classes:
        raise ValueError(f"static_ids {list(static_ids)}: need distinct class ids in "
                         f"0..{num_classes - 1}")
    return torch.tensor(ids, dtype=torch.long, device=device)


def warp_with_homography(prob: torch.Tensor, homography: torch.Tensor,
                         size: tuple[int, int] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9 with a homography as the flow: the day prediction seen from the night frame.

    ``prob``: B x C x h x w day prediction. ``homography``: B x 3 x 3, maps a night pixel
    p = (x, y, 1) to the day pixel H p (divided by its third coordinate), pixel centres at
    integer coordinates (x the column, y the row). ``size``: (height, width) of the night
    grid, default (h, w); H then maps that grid's pixels to ``prob``'s.

    Each output pixel bilinearly samples ``prob`` at H p. ``grid_sample`` with
    ``align_corners=True`` puts -1 and +1 on the centres of the first and last pixel, so
    pixel coordinate x is ``2 x / (w - 1) - 1`` (h likewise); the identity returns
    ``prob`` at the pixel centres.

    Returns ``(warped, valid)``: ``valid`` (B x 1 x H x W, bool) where H p lies inside the
    day image, i.e. in [0, w-1] x [0, h-1] (within 1e-3 pixel), with a positive third
    coordinate (H scaled as estimators return it, e.g. H[2, 2] = 1: points across the
    vanishing line have no counterpart); ``warped`` is 0 wherever ``valid`` is false.
    Differentiable in ``prob``.
    """
    if prob.dim() != 4:
        raise ValueError(f"warp_with_homography: prob must be B x C x h x w, got shape "
                         f"{tuple(prob.shape)}")
    b, _, h, w = prob.shape
    if homography.shape != (b, 3, 3):
        raise ValueError(f"warp_with_homography: homography must be {b} x 3 x 3, got shape "
                         f"{tuple(homography.shape)}")
    if h < 2 or w < 2:
        raise ValueError(f"warp_with_homography: prob needs sides >= 2, got {h}x{w}")
    out_h, out_w = (h, w) if size is None else (int(size[0]), int(size[1]))
    if out_h < 1 or out_w < 1:
        raise ValueError(f"warp_with_homography: size must be positive, got {size}")
    ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float64, device=prob.device),
                            torch.arange(out_w, dtype=torch.float64, device=prob.device),
                            indexing="ij")
    points = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones_like(xs).reshape(-1)])
    mapped = homography.detach().to(torch.float64) @ points          # B x 3 x HW
    z = mapped[:, 2]
    front = z > 0
    z = torch.where(front, z, torch.ones_like(z))
    x, y = mapped[:, 0] / z, mapped[:, 1] / z
    valid = (front & (x >= -_EDGE_TOLERANCE) & (x <= w - 1 + _EDGE_TOLERANCE)
             & (y >= -_EDGE_TOLERANCE) & (y <= h - 1 + _EDGE_TOLERANCE))
    outside = torch.full_like(x, -3.0)  # every tap of a point there is padding: 0
    gx = torch.where(valid, 2 * x / (w - 1) - 1, outside)
    gy = torch.where(valid, 2 * y / (h - 1) - 1, outside)
    grid = torch.stack([gx, gy], dim=-1).reshape(b, out_h, out_w, 2).to(prob.dtype)
    warped = F.grid_sample(prob, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=True)
    return warped, valid.reshape(b, 1, out_h, out_w)


def fuse_day_night(p_day_warped: torch.Tensor, p_night: torch.Tensor, h1: float = 0.8,
                   h2: float = 0.6, u: float = 0.4) -> torch.Tensor:
    """Eq. 10-11: ``F = h P'_td + (1 - h) P_tn`` with h = h1 where P'_td > u, else h2,
    elementwise (per class channel and pixel): a confident warped day probability keeps
    more of its weight, the night prediction fills in where the warp is unsure.

    Both inputs are softmax probabilities of the same shape; both are targets here
    (detached): the fused map only makes the pseudo-label. (The authors' code uses
    h2 = 0.2; the paper's 0.6 is the default.)
    """
    if p_day_warped.shape != p_night.shape:
        raise ValueError(f"fuse_day_night: shapes differ, {tuple(p_day_warped.shape)} vs "
                         f"{tuple(p_night.shape)}")
    day, night = p_day_warped.detach(), p_night.detach()
    h = torch.where(day > u, torch.full_like(day, h1), torch.full_like(day, h2))
    return h * day + (1 - h) * night


def static_pseudo_label(fused: torch.Tensor, class_weights: torch.Tensor,
                        static_ids: Sequence[int], valid: torch.Tensor,
                        ignore_index: int = IGNORE_INDEX,
                        ignore_dynamic: bool = False) -> torch.Tensor:
    """The static pseudo-label of Sec. 3.5.3: B x h x w long, an index INTO ``static_ids``
    (0..C_S-1), ``ignore_index`` where ``valid`` (B x 1 x h x w) is false.

    ``fused`` (B x C x h x w, all classes) is re-weighted per channel by w_k (Eq. 2,
    `class_frequency_weights`, one per class) as Sec. 3.3 does to predictions, restricted
    to the static channels (F^S_td, C_S of them) and argmaxed (ties: the first). Pixels
    outside the warped day image (warp holes) are ignored: they have no day evidence.

    Read literally, the argmax is over the static channels only, so a pixel the fused map
    calls a car gets its most likely static class. ``ignore_dynamic`` ignores instead
    the pixels whose re-weighted argmax over all classes is not static, as the authors'
    code does.
    """
    if fused.dim() != 4:
        raise ValueError(f"static_pseudo_label: fused must be B x C x h x w, got shape "
                         f"{tuple(fused.shape)}")
    b, c, h, w = fused.shape
    if class_weights.shape != (c,):
        raise ValueError(f"static_pseudo_label: class_weights must have {c} entries, got "
                         f"shape {tuple(class_weights.shape)}")
    if valid.shape != (b, 1, h, w) or valid.dtype != torch.bool:
        raise ValueError(f"static_pseudo_label: valid must be a bool {b} x 1 x {h} x {w} "
                         f"tensor, got {valid.dtype} {tuple(valid.shape)}")
    index = _static_index(static_ids, c, fused.device)
    weighted = fused.detach() * class_weights.detach().to(fused).view(1, c, 1, 1)
    label = weighted.index_select(1, index).argmax(dim=1)
    keep = valid[:, 0]
    if ignore_dynamic:
        keep = keep & torch.isin(weighted.argmax(dim=1), index)
    return label.masked_fill(~keep, ignore_index)


def static_focal_loss(night_logits: torch.Tensor, pseudo: torch.Tensor,
                      static_ids: Sequence[int], gamma: float = 1.0,
                      ignore_index: int = IGNORE_INDEX, neighbourhood: int = 3) -> torch.Tensor:
    """L_static (Eq. 12-13): a focal loss on the night prediction's static classes whose
    target is every static pseudo-label in the pixel's 3x3 neighbourhood.

    ``night_logits``: B x C x h x w, all classes; ``pseudo``: B x h x w from
    `static_pseudo_label` (indices into ``static_ids``, ``ignore_index`` for none).
    P^S_tn is the softmax over the static channels' logits alone (the authors' code
    slices the static logits and applies softmax to them), so the loss reaches only
    those channels.

    Eq. 13, ``p(c, i) = max_j o(c, j) P^S(c, i)`` with j over the 3x3 region centred at i,
    read literally: j indexes only the one-hot pseudo-label o, so
    ``p(c, i) = P^S(c, i) * dilate(o)(c, i)``, dilate a 3x3 max filter (8 neighbours and
    i itself): class c counts as correct at i if i or a neighbour is labelled c, which
    tolerates the pseudo-label's residual misalignment. Eq. 12 with the 0 log 0 = 0 of a
    one-hot cross-entropy:

        L = -1/N sum_i sum_c dilate(o)(c, i) (1 - P^S(c, i))^gamma log P^S(c, i)

    over the valid pixels i (label not ``ignore_index``); N is their number. An ignored
    pixel is no term and labels no neighbour. If no pixel is valid the loss is a zero
    still connected to ``night_logits``. (The authors' code takes, per pixel, the max
    over the neighbourhood's classes of w_c P^S(c, i) instead of the sum, and its
    neighbourhood shift is a no-op through tensor aliasing.)

    ``neighbourhood``: the side of the square region (odd); 1 is the plain focal loss on
    each pixel's own label, Table 5's "w/ Focal Loss" row.
    """
    if night_logits.dim() != 4:
        raise ValueError(f"static_focal_loss: night_logits must be B x C x h x w, got shape "
                         f"{tuple(night_logits.shape)}")
    b, c, h, w = night_logits.shape
    if pseudo.shape != (b, h, w):
        raise ValueError(f"static_focal_loss: pseudo must be {b} x {h} x {w}, got shape "
                         f"{tuple(pseudo.shape)}")
    if neighbourhood < 1 or neighbourhood % 2 == 0:
        raise ValueError(f"static_focal_loss: neighbourhood must be an odd side >= 1, got "
                         f"{neighbourhood}")
    index = _static_index(static_ids, c, night_logits.device)
    num_static = index.numel()
    log_p = F.log_softmax(night_logits.index_select(1, index).float(), dim=1)
    valid = pseudo != ignore_index
    if bool((valid & ((pseudo < 0) | (pseudo >= num_static))).any()):
        raise ValueError(f"static_focal_loss: pseudo holds labels outside 0..{num_static - 1} "
                         f"and {ignore_index}")
    mask = valid.unsqueeze(1).to(log_p.dtype)
    one_hot = F.one_hot(pseudo.masked_fill(~valid, 0).long(), num_static)
    one_hot = one_hot.permute(0, 3, 1, 2).to(log_p.dtype) * mask
    targets = F.max_pool2d(one_hot, neighbourhood, stride=1, padding=neighbourhood // 2) * mask
    focal = (1 - log_p.exp()).pow(gamma)
    return -(targets * focal * log_p).sum() / valid.sum().clamp(min=1)
