"""The training recipe for the learned fusion block (DeepSpeed + PEFT); ``train/run.py`` is the entry point."""
