"""Building blocks shared by the UDA methods (translators, discriminators, EMA teacher...)."""
