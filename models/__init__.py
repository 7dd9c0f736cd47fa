"""Networks, checkpoint formats, losses and the distiller."""
