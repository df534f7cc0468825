"""The bundled demo: a FLIP app, synthetic imaging data and ``flip-nvflare demo``."""
