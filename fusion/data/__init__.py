"""Media decoding, processors, tokenizers, ToyWorld and benchmark loaders."""
