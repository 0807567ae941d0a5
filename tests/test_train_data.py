"""The recipe's data layer: a deterministic sample order (exact resume, disjoint ranks) and the synthetic source
(deterministic samples, labels on the answer only, a cue that fixes the answer, batches the thinker accepts)."""

from __future__ import annotations

import pytest
import torch

from fusion.errors import ConfigError
from train.config import DataConfig, McqJsonlConfig, SyntheticConfig
from train.order import SampleOrder, position_seed
from train.sources import IGNORE_INDEX, build_source
from train.synthetic import CUE_WORDS, LETTERS


def test_every_epoch_is_a_permutation_and_epochs_differ():
    order = SampleOrder(7, seed=3)
    epochs = [order.positions(7 * e, 7) for e in range(3)]
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert epochs[0] != epochs[1]
    assert SampleOrder(7, seed=3).positions(5, 9) == epochs[0][5:] + epochs[1][:7]  # a pure function of position
    assert SampleOrder(7, seed=4).positions(0, 7) != epochs[0]


@pytest.mark.parametrize("world,accum,size", [(1, 1, 2), (2, 1, 3), (3, 2, 2)])
def test_ranks_and_micro_batches_tile_the_stream(world, accum, size):
    """Step s reads stream positions [s*A*W*m, (s+1)*A*W*m), split disjointly over micro-batches and ranks."""
    order = SampleOrder(10, seed=0)
    for step in range(3):
        read = [order.micro_batch(step, j, r, world, accum, size) for j in range(accum) for r in range(world)]
        per_step = accum * world * size
        assert sum(read, []) == order.positions(step * per_step, per_step)


@pytest.mark.parametrize("world,accum", [(2, 2), (4, 1)])
def test_the_same_global_batch_reads_the_same_micro_batches_on_any_number_of_ranks(world, accum):
    """With accum * world fixed, global micro-batch g = j * world + r of step s is one rank's micro-batch g."""
    order, size = SampleOrder(10, seed=0), 3
    for step in range(3):
        for j in range(accum):
            for r in range(world):
                g = j * world + r
                assert order.micro_batch(step, j, r, world, accum, size) == order.micro_batch(step, g, 0, 1,
                                                                                              accum * world, size)
                assert (SampleOrder.micro_batch_start(step, j, r, world, accum, size)
                        == SampleOrder.micro_batch_start(step, g, 0, 1, accum * world, size))


def test_position_seeds_depend_on_the_seed_position_and_purpose_only():
    assert position_seed(0, 5, "explore") == position_seed(0, 5, "explore")
    seeds = {position_seed(s, p, k) for s in (0, 1) for p in range(50) for k in ("explore", "noise")}
    assert len(seeds) == 200 and all(0 <= x < 2 ** 64 for x in seeds)  # distinct, valid torch generator seeds


@pytest.fixture(scope="module")
def source(tiny):
    model, processor = tiny
    return build_source(DataConfig(synthetic=SyntheticConfig(n_samples=12, seconds_min=2, seconds_max=5)),
                        processor, model.config)


def test_samples_are_deterministic_per_index(source, tiny):
    again = build_source(DataConfig(synthetic=SyntheticConfig(n_samples=12, seconds_min=2, seconds_max=5)),
                         tiny[1], tiny[0].config)
    for i in (0, 7, 3):
        a, b = source.example(i), again.example(i)
        assert a.input_ids == b.input_ids and torch.equal(a.pixel_values, b.pixel_values)
        assert torch.equal(a.mel, b.mel)
    assert source.example(0).input_ids != source.example(1).input_ids


def test_labels_are_the_answer_letter_and_the_turn_end_only(source, tiny):
    tok = tiny[1].tokenizer
    for i in range(6):
        e = source.example(i)
        answer = [t for t, label in zip(e.input_ids, e.labels) if label != IGNORE_INDEX]
        assert tok.convert_ids_to_tokens(answer) == [LETTERS[e.answer], "<|im_end|>"]
        assert e.labels[-2:] == e.input_ids[-2:]
        # the text cue: the question holds exactly the answer's colour word
        words = set(tok.convert_ids_to_tokens(e.input_ids[:-2]))
        assert [w for w in CUE_WORDS if w in words] == [CUE_WORDS[e.answer]]


def test_media_cue_marks_the_answer_chunk(tiny):
    model, processor = tiny
    media = build_source(DataConfig(synthetic=SyntheticConfig(n_samples=6, seconds_min=8, seconds_max=8,
                                                              cue="media")), processor, model.config)
    answers = set()
    for i in range(6):
        e = media.example(i)
        answers.add(e.answer)
        chunk_means = e.mel.reshape(e.mel.shape[0], 4, -1).mean(dim=(0, 2))  # 4 chunks of 2 s
        assert int(chunk_means.argmax()) == e.answer and chunk_means.max() > 1.5
        rows = e.pixel_values.reshape(4, -1, e.pixel_values.shape[-1]).mean(dim=(1, 2))  # 2 grids per chunk
        assert int(rows.argmax()) == e.answer
    assert len(answers) > 1


def test_collated_batch_is_right_padded_and_accepted_by_the_thinker(source, tiny):
    model = tiny[0]
    examples = [source.example(i) for i in (0, 1, 2)]
    batch = source.collate(examples)
    lengths = [len(e.input_ids) for e in examples]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for b, n in enumerate(lengths):
        assert bool(batch["attention_mask"][b, :n].all()) and not bool(batch["attention_mask"][b, n:].any())
        assert (batch["labels"][b, n:] == IGNORE_INDEX).all()
    labels = batch.pop("labels")
    with torch.no_grad():
        out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)


def test_unknown_sources_and_missing_paths_are_config_errors(tiny, tmp_path):
    model, processor = tiny
    with pytest.raises(ConfigError, match="known sources: mcq_jsonl, synthetic"):
        build_source(DataConfig(source="webdataset"), processor, model.config)
    with pytest.raises(ConfigError, match="set it"):
        build_source(DataConfig(source="mcq_jsonl"), processor, model.config)
    config = DataConfig(source="mcq_jsonl", mcq_jsonl=McqJsonlConfig(path=str(tmp_path / "none.jsonl")))
    with pytest.raises(ConfigError, match="no file"):
        build_source(config, processor, model.config)


def test_mcq_jsonl_source_trains_on_the_answer_letter(tiny, tmp_path):
    """A small ToyWorld split: labels are exactly the answer letter + end of turn; the cache is built once."""
    from fusion.data.cache import cache_path
    from fusion.data.mcq import load_jsonl
    from fusion.data.toyworld import generate

    model, processor = tiny
    generate(tmp_path, n_train=6, n_test=1, seed=3)
    config = DataConfig(source="mcq_jsonl", mcq_jsonl=McqJsonlConfig(path=str(tmp_path / "train.jsonl"), limit=5))
    source = build_source(config, processor, model.config)
    assert len(source) == 5 and cache_path(tmp_path / "train.jsonl", processor).is_file()
    samples = load_jsonl(tmp_path / "train.jsonl")
    batch = source.collate([source.example(i) for i in (4, 0, 2)])
    for row, i in enumerate((4, 0, 2)):
        answer = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert processor.tokenizer.decode(answer) == f"{samples[i].answer} <|im_end|>"
    labels = batch.pop("labels")
    with torch.no_grad():
        out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
