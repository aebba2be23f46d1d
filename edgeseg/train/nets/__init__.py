"""Building blocks shared by the UDA methods (translators, discriminators, GAN losses...).

Importing this package registers every network kind with `registry.build_net`.
"""

from edgeseg.train.nets import (  # noqa: F401  (register their kinds)
    autoencoder,
    discriminator,
    generator,
    relight,
    sait,
)
