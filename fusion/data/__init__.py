"""Media decoding, processors, tokenizers, ToyWorld and benchmark loaders.

One concept per module:

* ``media``: decode a file into frames sampled at the model's fps and 16 kHz mono audio (typed errors);
* ``mp4``: write small .mp4 clips (ToyWorld, tests);
* ``processor`` / ``tokenizer``: the offline processor (frames + audio -> thinker inputs) and word tokenizer;
* ``mcq``: the one MCQ sample schema and the generic JSONL loader;
* ``worldsense``: the WorldSense loader (``worldsense_qa.json`` + videos);
* ``toyworld``: the ToyWorld generator (``python -m fusion.data.toyworld``);
* ``prompts``: conversation builders (``toy`` and ``worldsense`` styles);
* ``batching``: samples -> processor batch (``collate``: eval or train with answer labels);
* ``cache``: a split's model-ready tensors, built once, batched from memory;
* ``scoring``: letter extraction (lmms-eval's rules), logits-mode scoring, accuracy tables.
"""
