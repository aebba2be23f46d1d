"""History of generated images for the discriminators (Shrivastava et al. 2017, CycleGAN).

Scoring a discriminator on older fakes as well as the newest ones keeps it from
chasing the generator's latest mode. Semantics are CycleGAN's ``ImagePool``: until
the pool is full every image is stored and returned; then each image is, with
probability 1/2, swapped for a random stored one (which is returned), else
returned as is. The draws come from the pool's own generator, whose state is
part of ``state_dict``, so a resumed run returns exactly the same images.
"""

from __future__ import annotations

from typing import Any

import torch


class ImagePool:
    def __init__(self, size: int = 50, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []  # (1, C, H, W) each, detached
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of the same shape: the new images, some swapped for stored ones."""
        if self.size == 0:
            return images.detach()
        out = []
        for image in images.detach().split(1):
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.generator).item() < 0.5:
                index = int(torch.randint(self.size, (), generator=self.generator))
                out.append(self.images[index].to(image.device, image.dtype))
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "images": [im.cpu() for im in self.images],
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"image pool of size {state['size']} cannot load into size {self.size}")
        self.images = [im.clone() for im in state["images"]]
        self.generator.set_state(state["generator"])
