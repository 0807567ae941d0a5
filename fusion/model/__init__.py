"""The compressed thinker, its one hook (`apply_keep`), and loading of tiny / random / real backbones."""
