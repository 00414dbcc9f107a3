"""sslall: semi-supervised, active-learning classification of blood-smear cell images."""

__version__ = "0.1.0"
