"""Building blocks shared by the UDA methods (translators, discriminators, GAN losses...)."""
